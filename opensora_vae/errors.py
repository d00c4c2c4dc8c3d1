"""The one base class for mistakes a user can fix from the message alone.

Every entry point runs through `opensora_vae.cli.run_cli`, which prints a `UserError` as one line
(`error: <message>`) and exits with status 2; anything else is a bug and keeps its traceback.
Subclasses say which part of the input was wrong (config, checkpoint, data table, ...).
"""


class UserError(Exception):
    """Bad input (settings, paths, data): exit 2 with the message, no traceback."""

    exit_code = 2
    # Most user errors come from input every rank sees the same way (settings, the table, a
    # checkpoint rank 0 resolved for all): under torchrun only rank 0 prints them. Errors about
    # what one rank alone read (its samples) set this False, and that rank prints them.
    same_on_all_ranks = True

    def one_line(self) -> str:
        """What the CLI prints after `error: ` (subclasses drop e.g. a worker's traceback)."""
        return str(self)


class MissingWeightsError(UserError, FileNotFoundError):
    """Pretrained weights that are not on this machine; the message says what to download and
    where to put it (or which install command converts them offline)."""


class OutputExistsError(UserError, FileExistsError):
    """An output location that already holds results a run would mix with or overwrite."""


def check_folder_location(folder, what: str, error: type[UserError] = UserError) -> None:
    """`folder` can be created (or is) a writable folder: its nearest existing ancestor (or itself)
    is a writable directory. Checked before any work, so results are never lost at the end."""
    import os
    from pathlib import Path

    folder = Path(folder)
    for parent in (folder, *folder.parents):
        if parent.exists():
            if not parent.is_dir():
                raise error(f"{what} {folder}: '{parent}' is a file, not a folder; pass a folder path")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise error(f"{what} {folder}: '{parent}' is not writable")
            return
