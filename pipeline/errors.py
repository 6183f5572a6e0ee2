"""The one exception type for a user's mistakes (bad config, missing data, unreachable cluster)."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix. The CLI prints it as one line and exits with code 2.

    `message` names the problem, `fix` says what to do about it.
    """

    def __init__(self, message: str, fix: str = "") -> None:
        self.message = message
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        """The message and the fix, joined into the single line the CLI prints."""
        return f"{self.message} — {self.fix}" if self.fix else self.message


class StageError(Exception):
    """A stage failed for a reason that is not the user's input; earlier stages' results are kept."""

    def __init__(self, stage: str, cause: BaseException, log_path: str) -> None:
        self.stage = stage
        self.log_path = log_path
        first_line = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:300]
        super().__init__(
            f"stage '{stage}' failed: {type(cause).__name__}: {first_line} (traceback in {log_path}); "
            "finished stages are kept, re-run the same command to continue"
        )


class Interrupted(Exception):
    """The user stopped a run (Ctrl-C); the message says what was kept and how to continue. Exit code 130."""
