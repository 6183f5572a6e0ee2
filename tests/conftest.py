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
