"""SIGTERM, what `timeout`, Slurm, Kubernetes and `docker stop` send, stops a command the way Ctrl-C does: the
stage is marked interrupted, what was kept is said, and the exit code is 143 (130 for Ctrl-C)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

INTERRUPTED_EXIT = 130  # 128 + SIGINT, as a shell reports a process Ctrl-C ended
TERMINATED_EXIT = 143  # 128 + SIGTERM


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM; a KeyboardInterrupt, so everything that handles Ctrl-C handles it."""


_state = {"terminated": False, "to_tune": False}


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    _state["terminated"] = True
    tune_stop = signal.getsignal(signal.SIGUSR1)
    if _state["to_tune"] and callable(tune_stop):
        # While a sweep runs, Ray Tune stops it gracefully on SIGUSR1 (its Ctrl-C handling): it saves its state
        # and returns, and the sweep is recorded as interrupted with the command that resumes it.
        tune_stop(signum, frame)
        return
    raise Terminated


def stop_on_sigterm() -> None:
    """Meet SIGTERM as Ctrl-C from now on (main thread only, where Python runs signal handlers)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


@contextmanager
def sigterm_kept() -> Iterator[None]:
    """Keep this process's SIGTERM handler across a block that replaces it (ray.init installs one that exits)."""
    main = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        if main and handler is not None:
            signal.signal(signal.SIGTERM, handler)


@contextmanager
def sigterm_stops_tune() -> Iterator[None]:
    """Within the block (a Tuner.fit), SIGTERM asks Tune to stop as Ctrl-C does, instead of raising."""
    _state["to_tune"] = True
    try:
        yield
    finally:
        _state["to_tune"] = False


def exit_code_for_interruption() -> int:
    """143 when SIGTERM stopped this process's work, else 130 (Ctrl-C)."""
    return TERMINATED_EXIT if _state["terminated"] else INTERRUPTED_EXIT
