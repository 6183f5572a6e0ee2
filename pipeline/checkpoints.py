"""A run's checkpoint files: written atomically by the training loop, read back as tensors only (never pickle),
and checked by the driver before anything starts, so that a damaged file is named in one line."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import UserError, command
from pipeline.rundir import DIVERGED, RunDir, atomic_write_bytes, atomic_write_text

CHECKPOINTS_KEPT = 2  # epoch checkpoints kept besides best.pt: a damaged last one still leaves the one before
CHECKPOINT_KEYS = ("epoch", "training_state", "metrics")


class DamagedCheckpoint(UserError):
    """A checkpoint file that cannot be read back (truncated, overwritten, or not a checkpoint at all)."""


def epoch_checkpoint(run: RunDir, epoch: int) -> Path:
    """The checkpoint written after `epoch` (1-based) finished."""
    return run.checkpoint_dir / f"epoch-{epoch:04d}.pt"


def epoch_checkpoints(run: RunDir) -> list[Path]:
    """The run's per-epoch checkpoints, oldest first."""
    return sorted(run.checkpoint_dir.glob("epoch-*.pt"))


def checkpoint_bytes(training_state: dict[str, Any], epoch: int, metrics: dict[str, float]) -> bytes:
    """What a checkpoint file holds: the training state after `epoch` (0-based) and that epoch's metrics row."""
    buffer = io.BytesIO()
    torch.save({"epoch": epoch, "training_state": training_state, "metrics": metrics}, buffer)
    return buffer.getvalue()


def read_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint's contents (tensors and plain containers only); a damaged file is a DamagedCheckpoint."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception:  # torch raises RuntimeError, OSError, pickle errors… whose text helps no one here
        what = "empty" if path.stat().st_size == 0 else "not a complete checkpoint: truncated or overwritten"
        raise DamagedCheckpoint(f"{path} is damaged ({what})") from None
    if not isinstance(state, dict) or any(key not in state for key in CHECKPOINT_KEYS):
        raise DamagedCheckpoint(f"{path} is damaged (it is not one of this tool's checkpoints)")
    return state


def check_for_training(run: RunDir) -> None:
    """Before a resume starts Ray: the checkpoint training would continue from, and best.pt, must be readable."""
    checkpoints = epoch_checkpoints(run)
    if checkpoints:
        latest = checkpoints[-1]
        try:
            read_checkpoint(latest)
        except DamagedCheckpoint as damaged:
            raise DamagedCheckpoint(damaged.message, _resume_fix(run, latest, checkpoints[:-1])) from None
    check_for_evaluation(run, required=False)


def check_for_evaluation(run: RunDir, required: bool = True) -> None:
    """Before evaluate starts Ray: best.pt, the model every later stage reads, must be readable."""
    if not run.best_checkpoint.exists() and not required:
        return
    try:
        read_checkpoint(run.best_checkpoint)
    except DamagedCheckpoint as damaged:
        raise DamagedCheckpoint(
            damaged.message,
            f"retrain the run: `{command('aae-pipeline run --resume', run.path, '--from train')}` (the earlier "
            "results move to previous-*/)",
        ) from None


def _resume_fix(run: RunDir, damaged: Path, earlier: list[Path]) -> str:
    retrain = f"`{command('aae-pipeline run --resume', run.path, '--from train')}`"
    if not earlier:
        return f"retrain the run from scratch: {retrain}"
    previous = earlier[-1]
    return (
        f"set it aside to resume from {previous.name}, which the run keeps: "
        f"`{command('mv', damaged, damaged.with_name(damaged.name + '.damaged'))}`, then "
        f"`{command('aae-pipeline run --resume', run.path)}`; or retrain from scratch: {retrain}"
    )


def latest_epoch(run: RunDir) -> int:
    """The last epoch (1-based) the run has a checkpoint of; 0 when it has none."""
    checkpoints = epoch_checkpoints(run)
    return int(checkpoints[-1].stem.removeprefix("epoch-")) if checkpoints else 0


def reconcile_metrics(run: RunDir) -> dict[str, Any] | None:
    """Make metrics.jsonl end at the epoch training continues from: the last checkpoint's.

    The loop writes an epoch's checkpoint and then its metrics row; a process killed between the two (a lost
    node, a killed sweep driver) leaves a checkpoint whose row is missing, and a checkpoint set aside by hand
    leaves rows of epochs that will be trained again. Rows after that epoch are dropped and a missing row is
    written from the checkpoint, which holds it. Returns the row it wrote, if any (not yet reported anywhere)."""
    epoch = latest_epoch(run)
    if not epoch or not run.metrics_path.exists():
        return None
    rows = run.metric_rows()
    kept = [row for row in rows if DIVERGED in row or row["epoch"] <= epoch]
    added = None
    if not any(row.get("epoch") == epoch for row in kept):
        added = read_checkpoint(epoch_checkpoint(run, epoch))["metrics"]
        kept.append(added)
    if kept != rows:
        atomic_write_text(run.metrics_path, "".join(json.dumps(row) + "\n" for row in kept))
    return added


def write_checkpoint(run: RunDir, payload: bytes, epoch: int, best: bool) -> None:
    """Write epoch-NNNN.pt (and best.pt when this epoch is the best so far) atomically; prune old epochs."""
    atomic_write_bytes(epoch_checkpoint(run, epoch + 1), payload)
    for old in epoch_checkpoints(run)[:-CHECKPOINTS_KEPT]:
        old.unlink(missing_ok=True)
    if best:
        atomic_write_bytes(run.best_checkpoint, payload)
