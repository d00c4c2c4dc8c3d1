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
