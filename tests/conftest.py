"""Shared test settings: small thread counts (CI has two cores) and an isolated data cache."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A small MNIST-shaped IDX dataset, prepared once per session: the keys to point a config at it."""
    from pipeline.data import prepare_dataset
    from tests.synthetic import write_synthetic_idx_dir

    root = tmp_path_factory.mktemp("synthetic")
    idx_dir = write_synthetic_idx_dir(root / "idx")
    prepare_dataset(f"idx:{idx_dir}", root / "data")
    return {"data.dataset": f"idx:{idx_dir}", "data.data_dir": str(root / "data")}


@pytest.fixture(scope="session")
def synthetic_svhn(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A few hundred SVHN-layout colour images (.mat files), prepared once per session: the keys to point a
    config at them."""
    from pipeline.data import prepare_dataset
    from tests.synthetic import write_synthetic_svhn_dir

    root = tmp_path_factory.mktemp("synthetic-svhn")
    mat_dir = write_synthetic_svhn_dir(root / "mat")
    prepare_dataset(f"svhn:{mat_dir}", root / "data")
    return {"data.dataset": f"svhn:{mat_dir}", "data.data_dir": str(root / "data")}


# Small nets keep every pipeline test to seconds on two cores; the real sizes are exercised by benchmarks.
TINY_MODEL = ["model.params.hidden=[128,128]", "model.params.disc_hidden=[64,64]"]


def tiny_overrides(dataset: dict[str, str], *extra: str) -> list[str]:
    """--set overrides that point an experiment at the synthetic data with small nets."""
    return [f"{key}={value}" for key, value in dataset.items()] + TINY_MODEL + list(extra)
