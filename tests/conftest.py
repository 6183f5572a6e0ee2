"""Shared test settings: small thread counts (CI has two cores) and an isolated data cache."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

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


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator:
    """One Ray head with 4 CPUs and token authentication, shared by every test that needs a cluster but not one
    of its own: each joins it with `--address` and works in its own directory, as Ray's suite shares
    `ray_start_regular_shared`. Its nodes have this checkout on PYTHONPATH, as a cluster has its users' code."""
    from tests.helpers import REPO, RayCluster

    root = Path(tempfile.mkdtemp(prefix="aae-head-", dir="/tmp"))  # short: Ray's socket paths must fit
    cluster = RayCluster(root, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    try:
        cluster.start_node("node_head", cpus=4)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


# Small nets keep every pipeline test to seconds on two cores; the real sizes are exercised by benchmarks.
TINY_MODEL = ["model.params.hidden=[128,128]", "model.params.disc_hidden=[64,64]"]


def tiny_overrides(dataset: dict[str, str], *extra: str) -> list[str]:
    """--set overrides that point an experiment at the synthetic data with small nets."""
    return [f"{key}={value}" for key, value in dataset.items()] + TINY_MODEL + list(extra)
