"""FloLPIPS' PWC-Net weights when online: with no --pwc_weights and nothing cached, the file is
downloaded from the reference's URL into the torch hub cache, verified (pinned sha256 when one is
pinned; weights_only load strictly into PWCNet) before it appears there. A loopback HTTP server on
127.0.0.1 plays the reference's host."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
from pathlib import Path

import pytest
import torch

from opensora_vae.errors import MissingWeightsError
from opensora_vae.metrics import pwcnet
from opensora_vae.weights import WeightsIntegrityError


@pytest.fixture()
def server(tmp_path):
    """(folder served, base URL, request paths seen)."""
    root = tmp_path / "served"
    root.mkdir()
    seen: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):  # once per request
            seen.append(self.path)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}", seen
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture()
def hub(tmp_path, monkeypatch) -> Path:
    """An empty torch hub cache; online; no weights path given."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(pwcnet.PWC_WEIGHTS_ENV, raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return tmp_path / "torch" / "hub" / "checkpoints"


def serve_weights(root: Path, state: dict) -> bytes:
    torch.save(state, root / pwcnet.PWC_FILENAME)
    return (root / pwcnet.PWC_FILENAME).read_bytes()


def released_like_state() -> dict:
    """Random PWC-Net weights under the released file's "module*" names."""
    torch.manual_seed(0)
    return {k.replace("net", "module"): v for k, v in pwcnet.PWCNet().state_dict().items()}


def test_right_file_is_downloaded_verified_and_cached_once(server, hub, monkeypatch):
    root, url, seen = server
    data = serve_weights(root, released_like_state())
    monkeypatch.setattr(pwcnet, "PWC_URL", f"{url}/{pwcnet.PWC_FILENAME}")
    monkeypatch.setattr(pwcnet, "PWC_SHA256", hashlib.sha256(data).hexdigest())
    net = pwcnet.build_pwcnet()
    assert (hub / pwcnet.PWC_FILENAME).read_bytes() == data and sorted(p.name for p in hub.iterdir()) == [
        pwcnet.PWC_FILENAME]
    want = released_like_state()
    for key, value in net.state_dict().items():
        assert torch.equal(value, want[key.replace("net", "module")]), key
    pwcnet.build_pwcnet()
    assert seen == [f"/{pwcnet.PWC_FILENAME}"]  # the second build reads the cache


def test_wrong_hash_is_refused_and_nothing_is_cached(server, hub, monkeypatch):
    root, url, _ = server
    serve_weights(root, released_like_state())
    monkeypatch.setattr(pwcnet, "PWC_URL", f"{url}/{pwcnet.PWC_FILENAME}")
    monkeypatch.setattr(pwcnet, "PWC_SHA256", "0" * 64)
    with pytest.raises(WeightsIntegrityError, match="sha256"):
        pwcnet.build_pwcnet()
    assert not hub.exists() or list(hub.iterdir()) == []


def test_without_a_pinned_hash_only_pwcnet_weights_are_kept(server, hub, monkeypatch):
    root, url, _ = server
    serve_weights(root, {"netOne.weight": torch.zeros(3)})  # a tensor file, but not PWC-Net's
    monkeypatch.setattr(pwcnet, "PWC_URL", f"{url}/{pwcnet.PWC_FILENAME}")
    monkeypatch.setattr(pwcnet, "PWC_SHA256", None)
    with pytest.raises(WeightsIntegrityError, match="not the PWC-Net weights"):
        pwcnet.build_pwcnet()
    assert not hub.exists() or list(hub.iterdir()) == []


def test_unreachable_host_gives_the_missing_weights_message(hub, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(pwcnet, "PWC_URL", f"http://127.0.0.1:{port}/{pwcnet.PWC_FILENAME}")
    with pytest.raises(MissingWeightsError) as err:
        pwcnet.build_pwcnet()
    assert pwcnet.PWC_FILENAME in str(err.value) and str(hub / pwcnet.PWC_FILENAME) in str(err.value)
    assert not hub.exists() or list(hub.iterdir()) == []


def test_offline_makes_no_request(server, hub, monkeypatch):
    root, url, seen = server
    serve_weights(root, released_like_state())
    monkeypatch.setattr(pwcnet, "PWC_URL", f"{url}/{pwcnet.PWC_FILENAME}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingWeightsError):
        pwcnet.build_pwcnet()
    assert seen == []


def test_a_given_path_that_does_not_exist_is_never_downloaded(server, hub, monkeypatch, tmp_path):
    root, url, seen = server
    serve_weights(root, released_like_state())
    monkeypatch.setattr(pwcnet, "PWC_URL", f"{url}/{pwcnet.PWC_FILENAME}")
    with pytest.raises(MissingWeightsError):
        pwcnet.build_pwcnet(tmp_path / "typo.pytorch")
    assert seen == []
