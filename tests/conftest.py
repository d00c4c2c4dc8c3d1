import os

# Before torch is imported: without PASSIVE an idle OpenMP pool can make a CPU process ~40x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Tests never reach the Hugging Face hub; a missing file must fail fast, not hang on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ASSETS = Path(__file__).resolve().parent / "assets"
MEDIA = REPO / "assets" / "media"


@pytest.fixture(scope="session")
def repo_dir() -> Path:
    return REPO


@pytest.fixture(scope="session")
def assets_dir() -> Path:
    return ASSETS


@pytest.fixture(scope="session")
def media_dir() -> Path:
    return MEDIA


def build_tiny_pipeline(seed: int = 0, **model_overrides):
    """The tiny-config pipeline with deterministic random weights."""
    from opensora_vae.config import load_config
    from opensora_vae.models import build_pipeline

    cfg = load_config(REPO / "configs/vae/train/tiny/stage1.py")
    model_cfg = cfg.model.to_dict() if hasattr(cfg.model, "to_dict") else dict(cfg.model)
    model_cfg.update(model_overrides)
    torch.manual_seed(seed)
    return build_pipeline(model_cfg)


@pytest.fixture
def tiny_pipeline():
    return build_tiny_pipeline().eval()
