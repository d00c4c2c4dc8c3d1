"""The shared entry-point runner: exit statuses, one-line user errors, torchrun's error file."""

import json

import pytest

from opensora_vae.cli import run_cli, run_main
from opensora_vae.config import ConfigError


def test_exit_statuses(capsys):
    assert run_main(lambda argv: 0, []) == 0
    assert run_main(lambda argv: None, []) == 0
    assert run_main(lambda argv: 3, []) == 3

    def crash(argv):
        raise RuntimeError("boom")

    assert run_main(crash, []) == 1
    assert "Traceback" in capsys.readouterr().err

    def user_error(argv):
        raise ConfigError("config 'x.py' does not exist")

    assert run_main(user_error, []) == 2
    err = capsys.readouterr().err
    assert err == "error: config 'x.py' does not exist\n"

    def interrupted(argv):
        raise KeyboardInterrupt

    assert run_main(interrupted, []) == 130


def test_argv_reaches_main():
    seen = []
    assert run_main(lambda argv: seen.append(argv), ["a", "--b"]) == 0
    assert seen == [["a", "--b"]]


def test_user_error_is_recorded_for_torchrun(tmp_path, monkeypatch, capsys):
    error_file = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))
    monkeypatch.setenv("RANK", "1")

    def user_error(argv):
        raise ConfigError("bad value")

    assert run_main(user_error, []) == 2
    assert capsys.readouterr().err == ""  # the same on every rank: rank 0 reports it
    recorded = json.loads(error_file.read_text())
    assert recorded["message"]["message"] == "ConfigError: bad value"


def test_run_cli_exits_with_the_status():
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda argv: 2, [])
    assert exit_info.value.code == 2


def test_an_error_about_one_ranks_data_is_printed_by_that_rank(monkeypatch, capsys):
    from opensora_vae.data.dataset import UnreadableSamplesError

    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("TORCHELASTIC_ERROR_FILE", raising=False)

    def unreadable(argv):
        raise UnreadableSamplesError("20 consecutive unreadable samples")

    assert run_main(unreadable, []) == 2
    assert capsys.readouterr().err == "error (rank 1): 20 consecutive unreadable samples\n"


@pytest.mark.parametrize("script,argv", [
    ("tools/install_weights.py", ["--if-missing", "--out", ""]),  # was: the default folder, silently
    ("tools/install_weights.py", ["--only", "lpips", "--lpips-sdist", " "]),
    ("scripts/make_csv.py", ["", "out.csv"]),  # was: the current folder scanned
    ("scripts/make_csv.py", ["media", "  "]),
])
def test_empty_path_arguments_are_refused(script, argv, tmp_path, monkeypatch, capsys):
    """Every path flag of every entry script: empty means a mistake (issue 19.3)."""
    from tests.helpers import REPO, run_entry

    monkeypatch.chdir(tmp_path)
    assert run_entry(REPO / script, argv) == 2
    assert "empty path" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
