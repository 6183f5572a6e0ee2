"""A prepared dataset's splits as tensors: for training (with the labelled subset it may see), and for scoring."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline.config import Config
from pipeline.data import load_label_split, load_split
from pipeline.data.labels import balanced_subset


@dataclass
class TrainingData:
    """The training split as float tensors, the label mask, and the validation split."""

    x: torch.Tensor
    y: torch.Tensor
    labelled: torch.Tensor  # indices of examples whose label the model may see
    x_val: torch.Tensor
    y_val: torch.Tensor
    is_labelled: torch.Tensor = field(init=False)  # a bool per training example, from `labelled`

    def __post_init__(self) -> None:
        self.is_labelled = torch.zeros(len(self.y), dtype=torch.bool, device=self.y.device)
        self.is_labelled[self.labelled] = True


def load_training_data(config: Config, device: torch.device | None = None) -> TrainingData:
    """Load train/validation, apply data.limit, pick the labelled subset, and flatten images to [0,1] floats.
    The training split goes to `device` (default: the CPU); the validation split stays on the CPU."""
    data_dir = Path(config.data.data_dir) if config.data.data_dir else None
    images, labels = load_split(config.data.dataset, "train", data_dir)
    val_images, val_labels = load_split(config.data.dataset, "validation", data_dir)
    if config.data.limit is not None:
        images, labels = images[: config.data.limit], labels[: config.data.limit]
    if config.data.labels == "all":
        labelled = np.arange(len(labels))
    elif config.data.limit is None:
        labelled = load_label_split(config.data.dataset, config.data.labels, config.data.label_seed, data_dir)
    else:
        # The same draw as the prepared label splits, over the first `limit` examples: a limit changes the pool,
        # never the rules.
        labelled = balanced_subset(labels, config.data.labels, config.data.label_seed)
    on = device or torch.device("cpu")
    return TrainingData(
        x=to_float(images).to(on),
        y=torch.tensor(labels, dtype=torch.long).to(on),
        labelled=torch.as_tensor(np.sort(labelled), dtype=torch.long).to(on),
        x_val=to_float(val_images),
        y_val=torch.tensor(val_labels, dtype=torch.long),
    )


def to_float(images: np.ndarray) -> torch.Tensor:
    """Images (N, H, W) uint8 as flat (N, H*W) floats in [0, 1]."""
    return torch.from_numpy(images.reshape(len(images), -1)).float().div_(255.0)


@dataclass
class Split:
    """One data split as flat [0, 1] floats (N, D) and integer labels (N,)."""

    x: torch.Tensor
    y: np.ndarray


def load_eval_split(config: Config, split: str, limit: int | None = None) -> Split:
    """A split of the run's dataset ("train" honours data.limit, as training did); `limit` keeps the first rows."""
    data_dir = Path(config.data.data_dir) if config.data.data_dir else None
    images, labels = load_split(config.data.dataset, split, data_dir)
    if split == "train" and config.data.limit is not None:
        images, labels = images[: config.data.limit], labels[: config.data.limit]
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return Split(x=to_float(images), y=np.asarray(labels, dtype=np.int64))
