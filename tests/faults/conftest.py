"""Fixtures of the fault suite; the media, checkpoints and process runners they use are plain
functions in tests/helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import BadMedia, make_bad_media, make_broken_checkpoints


@pytest.fixture(scope="session")
def bad_media(tmp_path_factory) -> BadMedia:
    return make_bad_media(tmp_path_factory.mktemp("bad_media"))


@pytest.fixture(scope="session")
def broken_checkpoints(tmp_path_factory) -> dict[str, Path]:
    return make_broken_checkpoints(tmp_path_factory.mktemp("ckpts"))
