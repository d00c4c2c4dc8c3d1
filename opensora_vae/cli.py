"""The one runner every entry script ends in: `run_cli(main)`.

Each script is `parse -> main(argv) -> int -> run_cli(main)`. The runner gives all of them the
same behaviour:

- CPU thread settings before torch loads: without `OMP_WAIT_POLICY=PASSIVE` an idle OpenMP pool
  can make a CPU process 16-40x slower for its whole life. Values the user set are kept.
- Logging: INFO to stderr (`setup_logging`; training adds `<outputs>/train.log`).
- Exit status: 0 success, 2 a `UserError` (one line `error: ...`, no traceback), 130 Ctrl-C,
  1 anything else (a bug: the traceback is printed).
- Under torchrun a user error is printed by the rank that raised it and recorded in torchrun's
  error file (`TORCHELASTIC_ERROR_FILE`, the `@record` convention), so the launcher's summary names
  the cause; the process group is destroyed and the process ends with `os._exit`, which avoids
  torch + gloo aborting during interpreter shutdown.

Import this module before torch (entry scripts import it first).
"""

from __future__ import annotations

import os

# Must run before `import torch` anywhere in the process: OpenMP reads these once, at load.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable, NoReturn, Sequence  # noqa: E402

from .errors import UserError  # noqa: E402

_HANDLER_TAG = "_opensora_vae_handler"
LOG_FORMAT = "%(asctime)s%(rank)s %(levelname)s %(name)s: %(message)s"


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is now (it may be swapped, e.g. by pytest's capture)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ assigns it; the property always wins
        pass


class _RankFilter(logging.Filter):
    def __init__(self, rank: int | None):
        super().__init__()
        self.text = f" [rank {rank}]" if rank is not None else ""

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.text
        return True


def current_rank() -> int | None:
    """The torchrun rank of this process, None outside torchrun."""
    rank = os.environ.get("RANK")
    return int(rank) if rank is not None and rank.isdigit() else None


def setup_logging(log_file: str | Path | None = None, rank: int | None = None) -> None:
    """INFO on rank 0 (stderr, and `log_file` if given), warnings only on the other ranks.

    Safe to call again in the same process (tests): handlers it added earlier are replaced.
    """
    rank = current_rank() if rank is None else rank
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, _HANDLER_TAG, False)]:
        root.removeHandler(handler)
        handler.close()
    _add_handler(_CurrentStderrHandler(), rank)
    root.setLevel(logging.INFO if (rank or 0) == 0 else logging.WARNING)
    if log_file is not None:
        add_log_file(log_file, rank)


def add_log_file(log_file: str | Path, rank: int | None = None) -> None:
    """Also writes the log to `log_file` on rank 0 (training's `<outputs>/train.log`), keeping the
    rest of the setup; a log file added earlier in this process is replaced."""
    rank = current_rank() if rank is None else rank
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, _HANDLER_TAG, False)
                    and isinstance(h, logging.FileHandler)]:
        root.removeHandler(handler)
        handler.close()
    if (rank or 0) == 0:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        _add_handler(logging.FileHandler(log_file), rank)


def _add_handler(handler: logging.Handler, rank: int | None) -> None:
    handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
    handler.addFilter(_RankFilter(rank))
    setattr(handler, _HANDLER_TAG, True)
    logging.getLogger().addHandler(handler)


def _record_for_torchrun(message: str, exc: BaseException) -> None:
    """Writes torchrun's error file, so its `ChildFailedError` summary shows the real cause."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path or os.path.exists(path):
        return
    data = {"message": {"message": f"{type(exc).__name__}: {message}",
                        "extraInfo": {"py_callstack": message, "timestamp": str(int(time.time()))}}}
    try:
        with open(path, "w") as f:
            json.dump(data, f)
    except OSError:
        pass


def report_user_error(err: BaseException) -> None:
    """`error: <message>` on stderr and in the log files, once, from the rank that raised it."""
    message = err.one_line() if isinstance(err, UserError) else str(err)
    rank = current_rank()
    prefix = f"error (rank {rank}): " if rank not in (None, 0) else "error: "
    _record_for_torchrun(message, err)
    if rank not in (None, 0) and getattr(err, "same_on_all_ranks", True):
        return  # rank 0 says it; torchrun's summary has every rank's error file
    print(prefix + message, file=sys.stderr, flush=True)
    for handler in logging.getLogger().handlers:  # the log file keeps the abort too
        if isinstance(handler, logging.FileHandler):
            handler.handle(logging.LogRecord("opensora_vae", logging.ERROR, __file__, 0,
                                             prefix + message, None, None))


def _flush_everything() -> None:
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:  # a closed stream must not turn success into failure
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


def run_main(main: Callable[[Sequence[str]], int | None], argv: Sequence[str] | None = None) -> int:
    """Runs `main(argv)` and maps its outcome to an exit status (see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        code = main(argv)
        return 0 if code is None else int(code)
    except UserError as err:
        report_user_error(err)
        return err.exit_code
    except SystemExit as exc:  # argparse: 2 for bad flags (it printed why), 0 for --help
        if isinstance(exc.code, int) or exc.code is None:
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:  # a bug: keep the traceback
        rank = current_rank()
        prefix = f"[rank {rank}] " if rank is not None else ""
        print(f"{prefix}failed:\n{traceback.format_exc()}", file=sys.stderr)
        _record_for_torchrun(f"{type(exc).__name__}: {exc}", exc)
        return 1


def run_cli(main: Callable[[Sequence[str]], int | None], argv: Sequence[str] | None = None) -> NoReturn:
    """`run_main`, then the process group is torn down and the process exits with that status."""
    code = run_main(main, argv)
    from .distributed import destroy, is_initialized, launched_by_torchrun  # torch loads only after run_main

    distributed = is_initialized()
    if distributed:
        try:
            destroy()
        except Exception as exc:  # a peer that died already: still exit with our own status
            print(f"destroy_process_group failed: {exc}", file=sys.stderr)
    if distributed or launched_by_torchrun():
        _flush_everything()
        os._exit(code)
    sys.exit(code)
