"""Stage 1: make sure the dataset (and the labelled split the config asks for) is prepared and verified."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.data import load_label_split, prepare_dataset


def prepare(config: Config) -> dict[str, Any]:
    """Prepare the dataset if needed and record the labelled split; returns where it lives."""
    data_dir = Path(config.data.data_dir) if config.data.data_dir else None
    dataset_dir = prepare_dataset(config.data.dataset, data_dir)
    outputs: dict[str, Any] = {"dataset_dir": str(dataset_dir)}
    if isinstance(config.data.labels, int) and config.data.limit is None:
        labelled = load_label_split(config.data.dataset, config.data.labels, config.data.label_seed, data_dir)
        outputs["labelled"] = len(labelled)
    return outputs
