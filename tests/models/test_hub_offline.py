"""Offline without HF_HUB_OFFLINE (issue 23, item 7): the hub is probed once per process, and an
uncached hub id then fails at once with the usual message instead of huggingface_hub's five
retries per file (~30 s, each retry logged)."""

import os
import socket

import pytest

from opensora_vae.errors import MissingWeightsError
from opensora_vae.models import checkpoint_io
from opensora_vae.models.checkpoint_io import CheckpointError, resolve_checkpoint_files
from opensora_vae.models.spatial import SpatialVAE


@pytest.fixture
def unreachable_hub(monkeypatch, tmp_path):
    """No HF_HUB_OFFLINE, an empty hub cache and no name resolution: counts lookups."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # restored afterwards: the probe sets it
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    lookups = []

    def no_dns(host, *args, **kwargs):
        lookups.append(host)
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    checkpoint_io.hub_unreachable.cache_clear()
    yield lookups
    checkpoint_io.hub_unreachable.cache_clear()


def test_unreachable_hub_is_detected_once_and_fails_fast(unreachable_hub):
    with pytest.raises(MissingWeightsError, match="unreachable.*not in the local hub cache"):
        SpatialVAE.from_pretrained("someone/not-cached-vae", subfolder="vae", cache_dir=None)
    with pytest.raises(CheckpointError, match="(?s)unreachable.*huggingface-cli download"):
        resolve_checkpoint_files("someone/not-cached-pipeline")
    # One probe for the whole process; no request (and no retry) reached the network layer.
    assert unreachable_hub == ["huggingface.co"]
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # subprocesses (DataLoader workers) need no probe


def test_offline_env_needs_no_probe(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("probed although offline"))
    checkpoint_io.hub_unreachable.cache_clear()
    try:
        assert checkpoint_io.hub_unreachable() == "HF_HUB_OFFLINE is set"
        assert not checkpoint_io.hub_local_files_only(__file__)  # local paths never need the hub
    finally:
        checkpoint_io.hub_unreachable.cache_clear()
