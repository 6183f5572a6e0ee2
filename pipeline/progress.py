"""What a person watching a run sees: one line per epoch while training, a summary table at the end."""

from __future__ import annotations

import io
import json
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table

from pipeline.rundir import PROGRESS

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class _TeeToLog(io.TextIOBase):
    """stdout for the console, copied without colour codes into the run directory's log once one is set."""

    def __init__(self) -> None:
        self.log: TextIO | None = None

    def write(self, text: str) -> int:
        sys.stdout.write(text)
        if self.log is not None:
            self.log.write(_ANSI.sub("", text))
        return len(text)

    def flush(self) -> None:
        sys.stdout.flush()
        if self.log is not None:
            self.log.flush()

    def isatty(self) -> bool:
        return sys.stdout.isatty()


_stdout = _TeeToLog()
console = Console(file=_stdout, highlight=False, soft_wrap=True)


def log_to(path: Path) -> None:
    """From now on, also append everything the console prints to `path` (the run's log)."""
    if _stdout.log is not None:
        _stdout.log.close()
    _stdout.log = path.open("a", buffering=1)


def format_epoch(row: dict[str, Any], total_epochs: int) -> str:
    """One epoch's line: the losses, the validation metric and the time."""
    losses = "  ".join(
        f"{key.removeprefix('train/').removesuffix('_loss')} {value:.3f}"
        for key, value in row.items()
        if key.startswith("train/")
    )
    if "val/error" in row:
        val = f"val error {row['val/error']:.2f}%"
    elif "val/cluster_error" in row:
        val = f"val cluster error {row['val/cluster_error']:.2f}%"
    else:
        val = f"val bce {row.get('val/recon_bce', 0):.2f}"
    if "val/clusters_used" in row:
        val += f"  {int(row['val/clusters_used'])} categories used"
    if "val/z_std_ratio" in row:
        val += f"  z spread {row['val/z_std_ratio']:.2f}x prior"
    return (
        f"epoch {int(row['epoch']):>3}/{total_epochs}  {losses}  [bold]{val}[/bold]  "
        f"{row.get('time/epoch_s', 0):.1f}s  {row.get('time/examples_per_s', 0):.0f} ex/s"
    )


class EpochPrinter(threading.Thread):
    """Follows the run's metrics.jsonl (written by rank 0) and prints each new epoch as it lands. Within a long
    epoch it shows rank 0's progress (progress.json): a live line on a terminal, a line a minute in a log."""

    LOG_EVERY_S = 60.0

    def __init__(self, metrics_path: Path, total_epochs: int, poll_s: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.metrics_path = metrics_path
        self.progress_path = metrics_path.with_name(PROGRESS)
        self.total_epochs = total_epochs
        self.poll_s = poll_s
        self._stop_event = threading.Event()
        self._offset = metrics_path.stat().st_size if metrics_path.exists() else 0
        self._epoch_done = _last_epoch(metrics_path)  # earlier epochs' progress is not news
        self._logged_at = time.monotonic()
        self._live = Console(stderr=True).status("") if sys.stderr.isatty() else None
        self._shown = False

    def run(self) -> None:
        while not self._stop_event.wait(self.poll_s):
            self._drain()
        self._drain()
        self._show(None)

    def stop(self) -> None:
        """Print whatever is left and stop following."""
        self._stop_event.set()
        self.join(timeout=5)

    def _drain(self) -> None:
        if self.metrics_path.exists():
            with self.metrics_path.open() as handle:
                handle.seek(self._offset)
                text = handle.read()
            complete, _, _ = text.rpartition("\n")
            if complete:
                self._offset += len(complete) + 1
                for line in complete.splitlines():
                    row = json.loads(line)
                    if "epoch" in row:  # not the divergence mark, which the train stage reports itself
                        self._show(None)
                        console.print(format_epoch(row, self.total_epochs))
                        self._epoch_done = int(row["epoch"])
        try:
            progress = json.loads(self.progress_path.read_text())
        except (OSError, ValueError):
            return
        if progress.get("epoch", 0) > self._epoch_done:
            self._show(progress)

    def _show(self, progress: dict[str, Any] | None) -> None:
        """The epoch in progress: the live line (None clears it), or every LOG_EVERY_S a printed line."""
        if self._live is None:
            if progress is not None and time.monotonic() - self._logged_at >= self.LOG_EVERY_S:
                self._logged_at = time.monotonic()
                console.print(format_progress(progress, self.total_epochs))
            return
        if progress is None:
            if self._shown:
                self._live.stop()
                self._shown = False
            return
        self._live.update(format_progress(progress, self.total_epochs))
        if not self._shown:
            self._live.start()
            self._shown = True


def _last_epoch(metrics_path: Path) -> int:
    try:
        rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return 0
    return max((int(row["epoch"]) for row in rows if "epoch" in row), default=0)


def format_progress(progress: dict[str, Any], total_epochs: int) -> str:
    """One line for an epoch in progress: its step, the examples/s, the time left."""
    left = int(progress["seconds_left"])
    return (f"epoch {progress['epoch']:>3}/{total_epochs}  step {progress['step']}/{progress['steps']}  "
            f"{progress['examples_per_s']:.0f} ex/s  about {left // 60}:{left % 60:02d} left in this epoch")


def summary_table(title: str, metrics: dict[str, float]) -> Table:
    """A two-column table of a run's final numbers."""
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    return table


@contextmanager
def rows_progress(total: int, what: str, at_least: int = 20_000) -> Iterator[Callable[[int], None]]:
    """A progress bar over `total` rows on a terminal (for inputs of `at_least` rows); silent elsewhere. Yields
    the function that advances it."""
    if total < at_least or not sys.stderr.isatty():
        yield lambda done: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(what, total=total)
        yield lambda done: progress.advance(task, done)
