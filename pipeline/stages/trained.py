"""What evaluate and visualize share: the trained model of a run directory and the splits it is judged on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from aae.variants import build_model
from aae.variants.base import AAEModel
from pipeline.checkpoints import read_checkpoint
from pipeline.config import Config
from pipeline.data import load_split
from pipeline.errors import UserError, command
from pipeline.loop import to_float
from pipeline.rundir import RunDir

# Rows pushed through a network at once: bounds memory (a 2x1000 MLP on 1000 rows is a few MB).
CHUNK = 1000


@dataclass
class Split:
    """One data split as flat [0, 1] floats (N, D) and integer labels (N,)."""

    x: torch.Tensor
    y: np.ndarray


@dataclass
class TrainedModel:
    """A run's best checkpoint, rebuilt in eval mode, with the epoch it was saved at (1-based)."""

    model: AAEModel
    epoch: int
    checkpoint: Path


def load_eval_split(config: Config, split: str, limit: int | None = None) -> Split:
    """A split of the run's dataset ("train" honours data.limit, as training did); `limit` keeps the first rows."""
    data_dir = Path(config.data.data_dir) if config.data.data_dir else None
    images, labels = load_split(config.data.dataset, split, data_dir)
    if split == "train" and config.data.limit is not None:
        images, labels = images[: config.data.limit], labels[: config.data.limit]
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return Split(x=to_float(images), y=np.asarray(labels, dtype=np.int64))


def load_trained_model(config: Config, run: RunDir, input_dim: int) -> TrainedModel:
    """Rebuild the configured variant and load the run's best checkpoint into it (tensors only, never pickle)."""
    path = run.best_checkpoint
    if not path.is_file():
        raise UserError(
            f"{run.path} has no trained checkpoint ({path.relative_to(run.path)} is missing)",
            f"train it first: `{command('aae-pipeline run --resume', run.path)}`",
        )
    state = read_checkpoint(path)
    model = build_model(config.model.variant, {"input_dim": input_dim, **config.model.params})
    model.load_training_state(state["training_state"])
    model.eval()
    return TrainedModel(model=model, epoch=int(state["epoch"]) + 1, checkpoint=path)


@torch.no_grad()
def batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """fn applied to x chunk by chunk, concatenated on the CPU."""
    return torch.cat([fn(chunk).cpu() for chunk in x.split(CHUNK)])
