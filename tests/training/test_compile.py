"""`compile=True`: the compiled temporal VAE and LPIPS network train like eager (same losses,
same weights) and checkpoints keep eager's parameter names."""

import pytest
import torch

from opensora_vae.models import VideoVAEPipeline
from opensora_vae.training import Trainer
from opensora_vae.training import trainer as trainer_mod
from tests.helpers import make_media_csv, tiny_train_cfg


def _run(tmp_path, csv, name, compile_):
    # Stage 3 reaches both compiled modules: the temporal VAE and the LPIPS network.
    cfg = tiny_train_cfg(3, tmp_path / name, csv, max_steps=2, seed=0, compile=compile_,
                         mixed_strategy=None, dataset__num_frames=5, perceptual_random_backbone=True,
                         deterministic=True)
    trainer = Trainer(cfg)
    if compile_:
        assert trainer.pipe.temporal_vae._compiled_call_impl is not None
        assert trainer.loss_fn.perceptual._compiled_call_impl is not None
    result = trainer.fit()
    return result


def test_compiled_training_matches_eager(tmp_path, monkeypatch):
    # aot_eager traces forward and backward like inductor but needs no C++ build: the suite stays fast.
    monkeypatch.setattr(trainer_mod, "COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    csv = make_media_csv(tmp_path / "media", num_images=0)
    eager = _run(tmp_path, csv, "eager", False)
    compiled = _run(tmp_path, csv, "compiled", True)
    torch._dynamo.reset()
    assert len(eager.history) == len(compiled.history) == 2
    for e, c in zip(eager.history, compiled.history):
        losses = [k for k in e if k.startswith("loss/")]
        assert "loss/perceptual" in losses
        assert {k: c[k] for k in losses} == pytest.approx({k: e[k] for k in losses}, rel=1e-5, abs=1e-5)
    a = VideoVAEPipeline.from_pretrained(eager.last_checkpoint / "model").state_dict()
    b = VideoVAEPipeline.from_pretrained(compiled.last_checkpoint / "model").state_dict()
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
