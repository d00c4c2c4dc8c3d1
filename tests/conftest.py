import os

# Before torch is imported: without PASSIVE an idle OpenMP pool can make a CPU process ~40x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Tests never reach the Hugging Face hub; a missing file must fail fast, not hang on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests.helpers import MEDIA, REPO, TEST_ASSETS, build_tiny_pipeline  # noqa: E402


@pytest.fixture(scope="session")
def repo_dir() -> Path:
    return REPO


@pytest.fixture(scope="session")
def assets_dir() -> Path:
    return TEST_ASSETS


@pytest.fixture(scope="session")
def media_dir() -> Path:
    return MEDIA


@pytest.fixture
def tiny_pipeline():
    return build_tiny_pipeline().eval()
