"""What evaluate and visualize share: the trained model of a run directory and the splits it is judged on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from aae.variants import build_model
from aae.variants.base import AAEModel
from pipeline.checkpoints import read_checkpoint
from pipeline.config import Config
from pipeline.errors import UserError, command
from pipeline.rundir import RunDir

# Rows pushed through a network at once: bounds memory (a 2x1000 MLP on 1000 rows is a few MB).
CHUNK = 1000


@dataclass
class TrainedModel:
    """A run's best checkpoint, rebuilt in eval mode, with the epoch it was saved at (1-based)."""

    model: AAEModel
    epoch: int
    checkpoint: Path


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
