"""The one exception type for a user's mistakes (bad config, missing data, unreachable cluster)."""

from __future__ import annotations

import errno
import shlex
from pathlib import Path


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
        fix = "re-run the same command to continue"
        if out_of_space(cause):
            fix = "free disk space (or lift `ulimit -f`), then re-run the same command to continue"
        super().__init__(
            f"stage '{stage}' failed: {type(cause).__name__}: {first_line} (traceback in {log_path}); "
            f"finished stages are kept, {fix}"
        )


# What the OS says when a write finds no room: a full disk, a quota, a file-size limit.
_NO_ROOM = {errno.ENOSPC: "No space left on device", errno.EDQUOT: "Disk quota exceeded",
            errno.EFBIG: "File too large"}


def out_of_space(err: BaseException) -> bool:
    """Whether an error, or one it wraps (a Ray worker's, a chained cause), is a write that found no room."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in _NO_ROOM:
            return True
        if any(text in str(err) for text in _NO_ROOM.values()):
            return True
        err = getattr(err, "cause", None) or err.__cause__ or err.__context__
    return False


class Interrupted(Exception):
    """The user stopped a run (Ctrl-C, or SIGTERM); the message says what was kept and how to continue.

    Exit code 130 after Ctrl-C, 143 after SIGTERM (pipeline.signals)."""

    def __init__(self, message: str, exit_code: int = 130) -> None:
        self.exit_code = exit_code
        super().__init__(message)


def command(*words: str | Path) -> str:
    """A command line for the user to paste into a shell: strings as given, paths quoted."""
    return " ".join(shlex.quote(str(word)) if isinstance(word, Path) else word for word in words)
