"""Shared fixtures for the aae tests: one thread, a fixed seed, and a small synthetic image-like dataset."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import torch

from aae.batch import Batch
from aae.variants.base import AAEModel


@pytest.fixture(autouse=True)
def _seeded() -> None:
    # One thread: the machine is shared, and results are bit-reproducible per seed. AAE_TEST_SEED lets
    # a maintainer check that the training tests' thresholds hold for other seeds too.
    torch.set_num_threads(1)
    torch.manual_seed(int(os.environ.get("AAE_TEST_SEED", "0")))


def make_clusters(n: int, n_classes: int = 4, dim: int = 32, style_dim: int = 2, separation: float = 3.0,
                  style_scale: float = 1.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Image-like data in (0, 1): class prototype + a low-dimensional style, squashed near 0/1."""
    g = torch.Generator().manual_seed(seed)
    centres = separation * torch.randn(n_classes, dim, generator=g)
    style_map = style_scale * torch.randn(style_dim, dim, generator=g)
    y = torch.randint(n_classes, (n,), generator=g)
    style = torch.randn(n, style_dim, generator=g)
    return torch.sigmoid(3.0 * (centres[y] + style @ style_map)), y


@pytest.fixture
def clusters() -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """The synthetic dataset maker."""
    return make_clusters


def fit(model: AAEModel, x: torch.Tensor, y: torch.Tensor | None = None, steps: int = 1000,
        batch_size: int = 100, labelled: torch.Tensor | None = None, seed: int = 0) -> list[dict[str, float]]:
    """Train with random mini-batches; `labelled` indexes the rows whose labels the model may see."""
    g = torch.Generator().manual_seed(seed)
    history = []
    for _ in range(steps):
        idx = torch.randint(len(x), (batch_size,), generator=g)
        batch = Batch(x[idx], None if y is None else y[idx])
        if labelled is not None:
            lab = labelled[torch.randint(len(labelled), (batch_size,), generator=g)]
            batch.x_labelled, batch.y_labelled = x[lab], y[lab]
            batch.y = None
        history.append({key: float(loss) for key, loss in model.training_step(batch).items()})
    return history


@pytest.fixture
def train() -> Callable[..., list[dict[str, float]]]:
    """The mini-batch training loop."""
    return fit
