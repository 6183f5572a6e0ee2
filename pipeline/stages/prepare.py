"""Stage 1: make sure the dataset (and the labelled split the config asks for) is prepared and verified."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.data import image_shape, load_label_split, load_split, prepare_dataset
from pipeline.data.labels import balanced_subset
from pipeline.errors import UserError
from pipeline.rundir import RunDir


def prepare(config: Config, run: RunDir) -> dict[str, Any]:
    """Prepare the dataset if needed and record the labelled split; returns where it lives. The dataset is
    shared by every run, so nothing lands in the run directory (the manifest records the outputs)."""
    data_dir = Path(config.data.data_dir) if config.data.data_dir else None
    dataset_dir = prepare_dataset(config.data.dataset, data_dir)
    shape = image_shape(config.data.dataset, data_dir)
    _check_input_size(config, shape)
    # The image shape the model takes, kept with the run: it is loaded (load_run) where the data may not be.
    outputs: dict[str, Any] = {"dataset_dir": str(dataset_dir), "image_shape": list(shape)}
    if isinstance(config.data.labels, int) and config.data.limit is None:
        labelled = load_label_split(config.data.dataset, config.data.labels, config.data.label_seed, data_dir)
        outputs["labelled"] = len(labelled)
    elif isinstance(config.data.labels, int):
        # Drawn here as well as in every worker (the same deterministic draw), so an impossible count for this
        # data is one line now rather than an error in each worker.
        train_labels = load_split(config.data.dataset, "train", data_dir)[1][: config.data.limit]
        outputs["labelled"] = len(balanced_subset(train_labels, config.data.labels, config.data.label_seed))
    return outputs


def _check_input_size(config: Config, shape: tuple[int, ...]) -> None:
    """A config that fixes its networks' input size (the conv nets: 3x32x32) must get images of that size."""
    wanted = config.model.params.get("input_dim")
    if wanted is not None and int(wanted) != math.prod(shape):
        size = "x".join(str(d) for d in shape)
        raise UserError(
            f"experiment {config.experiment}'s networks take {wanted}-value images (model.params.input_dim) but "
            f"dataset {config.data.dataset} has {size} images ({math.prod(shape)} values)",
            "use a dataset of that image size (semisup-svhn: svhn or svhn:/dir of the official .mat files), or an "
            "experiment made for this dataset",
        )
