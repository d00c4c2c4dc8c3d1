"""`scripts/train_vae.py` with faults injected, for tests/faults/test_train_faults.py.

    python tests/faults/train_worker.py CONFIG --data-path ... (the entry script's arguments)
    torchrun ... tests/faults/train_worker.py CONFIG ...

Faults, chosen by environment variables (unset: none):
- FAULT_NAN_FROM_STEP=k: the loss is NaN on every step from step k on (counted from this
  process's first step, so from the start of the run or of the resume).
- FAULT_STALL_IN_SAVE_AT_STEP=k: the checkpoint write of step k stops halfway (model weights and
  training state written into the temp dir, config not yet, nothing renamed), prints
  FAULT_STALL_MARKER and sleeps, so the test can SIGKILL the run inside the write.
"""

import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FAULT_STALL_MARKER = "FAULT: stalled inside the checkpoint write of step"


def _inject_nan_from(first_step: int) -> None:
    from opensora_vae.losses import VAELoss

    original, calls = VAELoss.forward, {"n": 0}

    def forward(self, *args, **kwargs):
        terms = original(self, *args, **kwargs)
        calls["n"] += 1  # one loss evaluation per step
        if calls["n"] >= first_step:
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    VAELoss.forward = forward


def _stall_in_save_at(step: int) -> None:
    from opensora_vae.training import checkpoint as ckpt_io

    original = ckpt_io.dump_config

    def dump_config(cfg, path):
        # `path` is <outputs>/.tmp_step_XXXXXXXXX.<pid>/config.py: written after the weights and
        # the training state, before the rename that publishes the checkpoint.
        if path.parent.name.startswith(f"{ckpt_io.TMP_PREFIX}{ckpt_io.step_dir_name(step)}."):
            print(f"{FAULT_STALL_MARKER} {step}: {path.parent}", flush=True)
            time.sleep(600)
        return original(cfg, path)

    ckpt_io.dump_config = dump_config


def main(argv: list[str]) -> None:
    if os.environ.get("FAULT_NAN_FROM_STEP"):
        _inject_nan_from(int(os.environ["FAULT_NAN_FROM_STEP"]))
    if os.environ.get("FAULT_STALL_IN_SAVE_AT_STEP"):
        _stall_in_save_at(int(os.environ["FAULT_STALL_IN_SAVE_AT_STEP"]))
    sys.path.insert(0, str(REPO / "scripts"))
    import train_vae

    from opensora_vae.cli import run_cli

    run_cli(train_vae.main, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
