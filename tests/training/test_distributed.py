"""Two gloo processes under torchrun, through the real entry script.

Stage 2 is the hard case for DDP (its spatial decoder gets no gradient), and a NaN loss on one
rank only must make every rank skip the same step. Run as a script, this file is the worker:
it injects the NaN, then calls `scripts/train_vae.py`'s `main`.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO, child_env
NAN_RANK, NAN_CALL = 1, 2  # rank 1's second loss evaluation (step 2) is NaN


def _worker(argv: list[str]) -> None:
    from opensora_vae.losses import VAELoss

    original, calls = VAELoss.forward, {"n": 0}

    def forward(self, *args, **kwargs):
        terms = original(self, *args, **kwargs)
        calls["n"] += 1
        if int(os.environ["RANK"]) == NAN_RANK and calls["n"] == NAN_CALL:
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    VAELoss.forward = forward
    sys.path.insert(0, str(REPO / "scripts"))
    import train_vae

    from opensora_vae.cli import run_cli

    run_cli(train_vae.main, argv)


def _torchrun(outputs: Path, csv: Path, parallel: str):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__,
           str(REPO / "configs/vae/train/tiny/stage2.py"), "--data-path", str(csv), "--outputs", str(outputs),
           "--cfg-options", "dataset.image_size=[32,32]", "max_steps=4", "ckpt_every=2", "ema_decay=0.9",
           f"parallel={parallel}"]
    env = child_env()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    from tests.helpers import make_media_csv

    root = tmp_path_factory.mktemp("dist")
    csv = make_media_csv(root / "data", num_images=3)
    code, log = _torchrun(root / "ddp", csv, "ddp")
    return root, csv, code, log


def test_ddp_replicas_stay_identical_and_a_one_rank_nan_is_skipped_everywhere(ddp_run):
    from opensora_vae.models import VideoVAEPipeline
    from opensora_vae.training.checkpoint import read_training_state

    root, _, code, log = ddp_run
    assert code == 0, log
    assert "terminate called" not in log
    assert "2 × ddp" in log and "frozen (no active loss reaches them): spatial_vae.module.decoder" in log
    assert "step 2: non-finite loss or gradient norm, update skipped (1 in a row)" in log
    for step in (2, 4):
        state = read_training_state(root / "ddp" / f"step_00000000{step}")
        assert state["world_size"] == 2 and len(state["rng"]) == 2
        checksums = state["replica_checksums"]
        assert len(checksums) == 2 and checksums[0] == checksums[1]
        # Each rank draws its own sampling noise.
        assert not torch.equal(state["rng"][0]["generator"], state["rng"][1]["generator"])
    # 4 samples dealt to 2 ranks, batch 1: 2 steps per epoch, so step 4 ends epoch 1.
    assert state["global_step"] == 4 and (state["sampler"]["epoch"], state["sampler"]["global_consumed"]) == (1, 4)
    VideoVAEPipeline.from_pretrained(root / "ddp" / "step_000000004" / "model")


def test_fsdp2_on_cpu_matches_ddp(ddp_run):
    from safetensors.torch import load_file

    root, csv, ddp_code, _ = ddp_run
    assert ddp_code == 0
    code, log = _torchrun(root / "fsdp", csv, "fsdp")
    assert code == 0, log
    assert "2 × fsdp" in log and "step 2: non-finite" in log
    for sub in ("model", "ema"):
        ddp = load_file(root / "ddp" / "step_000000004" / sub / "model.safetensors")
        fsdp = load_file(root / "fsdp" / "step_000000004" / sub / "model.safetensors")
        assert ddp.keys() == fsdp.keys()
        for key in ddp:  # the same math, only the reduction order may differ
            assert torch.allclose(ddp[key], fsdp[key], atol=1e-6, rtol=0), (sub, key)


def _agree_worker(rank: int, port: int, results) -> None:
    import torch.distributed as dist

    from opensora_vae import distributed
    from opensora_vae.errors import UserError

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    outcome = {"value": distributed.rank0_decides(lambda: f"chosen by rank {rank}")}

    def refuse():
        raise UserError("bad input")

    def crash():
        raise KeyError("bug")

    for name, decide in (("user", refuse), ("bug", crash)):
        try:
            distributed.rank0_decides(decide)
        except Exception as err:
            outcome[name] = (type(err).__name__, str(err))
    outcome["each"] = distributed.decide_and_agree(lambda: rank * 10, deciding=rank == 1)
    results[rank] = outcome
    dist.destroy_process_group()


def test_rank0_decides_and_every_rank_agrees_on_its_value_or_its_error():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_agree_worker, args=(port, results), nprocs=2)
    for rank in (0, 1):
        assert results[rank]["value"] == "chosen by rank 0"
        assert results[rank]["user"] == ("UserError", "bad input")  # the user's error, everywhere
        assert results[rank]["each"] == [None, 10]
    assert results[0]["bug"] == ("KeyError", "'bug'")
    assert results[1]["bug"] == ("RuntimeError", "rank 0 failed: KeyError: 'bug'")


if __name__ == "__main__":
    _worker(sys.argv[1:])
