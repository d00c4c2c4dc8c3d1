"""scripts/setup_env.sh (run by run_tests.sh and quickstart.sh) installs on a fresh machine and
skips pip while .venv matches requirements.txt (issue 23, item 7). Run on a copy of the script
with a stand-in `.venv` whose `python` only records how it was called."""

import os
import shutil
import stat
import subprocess

from tests.helpers import REPO


def _fake_checkout(root):
    (root / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "setup_env.sh", root / "scripts" / "setup_env.sh")
    (root / "requirements.txt").write_text("torch==2.14.1\n")
    (root / "setup.py").write_text("# setup\n")
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    python = bin_dir / "python"
    python.write_text('#!/usr/bin/env bash\n'
                      'if [ "${1:-}" = "-c" ]; then echo 3.11-fake; exit 0; fi\n'
                      f'echo "$*" >> "{root}/calls.log"\n')
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    (bin_dir / "activate").write_text(f'export PATH="{bin_dir}:$PATH"\n')
    return root


def _run(root, **env):
    calls = root / "calls.log"
    calls.unlink(missing_ok=True)
    subprocess.run(["bash", str(root / "scripts" / "setup_env.sh")], check=True, capture_output=True,
                   env={**os.environ, **env})
    return calls.read_text().splitlines()


def _pip_calls(calls):
    return [c for c in calls if c.startswith("-m pip install")]


def test_installs_once_then_skips_until_requirements_change(tmp_path):
    root = _fake_checkout(tmp_path / "repo")
    first = _run(root)
    assert _pip_calls(first) == ["-m pip install --progress-bar on --upgrade pip",
                                 "-m pip install --progress-bar on -r requirements.txt",
                                 "-m pip install --progress-bar on --no-deps -e ."]  # none quiet
    assert first[-1] == "tools/install_weights.py --if-missing"
    assert (root / ".venv" / ".requirements.sha256").is_file()

    again = _run(root)
    assert _pip_calls(again) == []
    assert again == ["tools/install_weights.py --if-missing"]

    (root / "requirements.txt").write_text("torch==2.14.1\nnumpy==2.0.0\n")
    assert len(_pip_calls(_run(root))) == 3
    assert _pip_calls(_run(root)) == []
    assert len(_pip_calls(_run(root, SETUP_ENV_FORCE="1"))) == 3
    assert len(_pip_calls(_run(root, TORCH_VARIANT="cpu"))) == 4  # another variant: reinstalled


def test_failed_install_leaves_no_stamp(tmp_path):
    root = _fake_checkout(tmp_path / "repo")
    _run(root)
    python = root / ".venv" / "bin" / "python"
    python.write_text(python.read_text().replace('echo "$*"', 'case "$*" in *requirements.txt*) exit 1;; esac\n'
                                                 'echo "$*"'))
    (root / "requirements.txt").write_text("torch==2.14.1\nbroken==0\n")
    result = subprocess.run(["bash", str(root / "scripts" / "setup_env.sh")], capture_output=True)
    assert result.returncode != 0
    assert not (root / ".venv" / ".requirements.sha256").exists()
