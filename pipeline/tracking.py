"""Experiment tracking behind one small interface; stages call a Tracker and never import wandb.

A tracking failure must never stop training or lose results: implementations catch their own errors,
warn once, and carry on as a NullTracker would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol


class Tracker(Protocol):
    """What the pipeline logs: per-epoch metrics, a summary, images, tables and artifacts with lineage."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Stream one row of metrics (e.g. one epoch), names like `train/recon_loss`, `val/error`."""

    def log_summary(self, metrics: dict[str, float]) -> None:
        """Final numbers of the run (e.g. `test/error`)."""

    def log_images(self, images: dict[str, Path]) -> None:
        """PNG files, keyed by the name they should show under."""

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        """A small table (e.g. per-class error)."""

    def log_artifact(
        self, name: str, kind: str, paths: list[Path], uses: list[str] | None = None, metadata: dict | None = None
    ) -> None:
        """Files as a versioned artifact of type `kind`; `uses` names artifacts it was made from (lineage)."""

    def finish(self) -> None:
        """Flush and close."""


class NullTracker:
    """Tracking switched off (`--wandb disabled`) or unavailable: every call does nothing."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Do nothing."""

    def log_summary(self, metrics: dict[str, float]) -> None:
        """Do nothing."""

    def log_images(self, images: dict[str, Path]) -> None:
        """Do nothing."""

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        """Do nothing."""

    def log_artifact(
        self, name: str, kind: str, paths: list[Path], uses: list[str] | None = None, metadata: dict | None = None
    ) -> None:
        """Do nothing."""

    def finish(self) -> None:
        """Do nothing."""
