import pytest

from tests.export.helpers import make_export_inputs


@pytest.fixture(scope="module")
def export_inputs(tmp_path_factory):
    """A tiny checkpoint and a CSV of 2 videos, 2 images and 2 unusable rows."""
    return make_export_inputs(tmp_path_factory.mktemp("export_inputs"))
