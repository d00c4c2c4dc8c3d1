"""The table is parsed once per node under torchrun and shared (data/table.py).

Invariant: every rank ends with the same rows (or the same error), local rank 0 alone parses the
file, the other ranks map its copy, and the shared folder is empty when the call returns. Run as
a script, this file is one rank of a 2-process gloo job (the caller is torchrun, as in training).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import REPO, child_env


def _worker(csv: str, shared: str, report: str, no_room: bool) -> int:
    from opensora_vae import distributed
    from opensora_vae.data import table as table_module

    distributed.init_distributed(timeout_minutes=2)
    if no_room:
        table_module._SHARED_MARGIN_BYTES = 1 << 62
    calls = {"n": 0}
    original = table_module.load_table

    def counting_load(path):
        calls["n"] += 1
        return original(path)

    table_module.load_table = counting_load
    rank = int(os.environ["RANK"])
    out = {"rank": rank}
    try:
        table = table_module.load_table_once_per_node(csv)
        out.update(rows=list(table), mapped=isinstance(table.data, np.memmap))
    except table_module.TableError as exc:
        out["error"] = str(exc)
    out["parsed"] = calls["n"]
    distributed.barrier()
    out["left_in_shared"] = sorted(os.listdir(shared))
    Path(f"{report}.{rank}").write_text(json.dumps(out))
    if "error" in out:
        raise table_module.TableError(out["error"])
    return 0


def _torchrun(tmp_path: Path, csv: Path, no_room: bool = False):
    shared = tmp_path / "shm"
    shared.mkdir(exist_ok=True)
    report = tmp_path / "report"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__,
           str(csv), str(shared), str(report), "1" if no_room else "0"]
    env = child_env(OPENSORA_VAE_SHARED_TABLE_DIR=str(shared))
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240, env=env)
    reports = [json.loads(Path(f"{report}.{r}").read_text()) for r in (0, 1) if Path(f"{report}.{r}").exists()]
    return proc.returncode, proc.stdout + proc.stderr, reports, shared


def _csv(tmp_path: Path, header: str = "path,text") -> Path:
    csv = tmp_path / "t.csv"
    csv.write_text(f"{header}\n" + "".join(f"clips/v{i}.mp4,caption {i}\n" for i in range(50)) + "/abs/x.mp4,\n")
    return csv


def test_parsed_once_per_node_mapped_by_every_rank_and_nothing_left(tmp_path):
    csv = _csv(tmp_path)
    shared = tmp_path / "shm"
    shared.mkdir()
    dead_pid = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1  # no process can have it
    (shared / f"opensora_vae_table_{dead_pid}_0").mkdir()  # left by a job killed mid-way
    code, log, reports, shared = _torchrun(tmp_path, csv)
    assert code == 0, log
    want = [str(tmp_path / "clips" / f"v{i}.mp4") for i in range(50)] + ["/abs/x.mp4"]
    assert [r["rows"] for r in reports] == [want, want]
    assert [(r["parsed"], r["mapped"]) for r in reports] == [(1, True), (0, True)]
    assert [r["left_in_shared"] for r in reports] == [[], []]  # the stale folder went too


def test_no_room_in_the_shared_folder_means_each_rank_loads_its_own(tmp_path):
    code, log, reports, _ = _torchrun(tmp_path, _csv(tmp_path), no_room=True)
    assert code == 0, log
    assert [(r["parsed"], r["mapped"]) for r in reports] == [(1, False), (1, False)]
    assert reports[0]["rows"] == reports[1]["rows"] and len(reports[0]["rows"]) == 51
    assert [r["left_in_shared"] for r in reports] == [[], []]


def test_a_bad_table_fails_every_rank_with_the_same_error_and_no_hang(tmp_path):
    code, log, reports, _ = _torchrun(tmp_path, _csv(tmp_path, header="file,text"))
    assert code != 0
    assert len(reports) == 2 and reports[0]["error"] == reports[1]["error"]
    assert "no 'path' column" in reports[0]["error"] and str(tmp_path / "t.csv") in reports[0]["error"]
    assert [r["parsed"] for r in reports] == [1, 0]


def test_save_open_round_trip_is_read_only_and_equal(tmp_path):
    from opensora_vae.data.table import PathTable, load_table

    table = load_table(_csv(tmp_path))
    table.save(tmp_path / "copy")
    mapped = PathTable.open(tmp_path / "copy", table.root)
    assert list(mapped) == list(table) and len(mapped) == 51
    assert isinstance(mapped.data, np.memmap) and not mapped.data.flags.writeable
    with pytest.raises(FileExistsError):
        table.save(tmp_path / "copy")


if __name__ == "__main__":
    from opensora_vae.cli import run_cli

    run_cli(lambda argv: _worker(argv[0], argv[1], argv[2], argv[3] == "1"), sys.argv[1:])
