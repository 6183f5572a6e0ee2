"""Every experiment of the paper builds from its YAML and takes two training steps on small data."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.config import list_experiments, load_config
from pipeline.data.splits import load_training_data
from pipeline.loop import (
    WorkerContext,
    build_training_model,
    make_batch,
    validate,
    validation_metric,
)
from tests.conftest import tiny_overrides


@pytest.mark.parametrize("experiment", sorted(list_experiments()))
def test_experiment_trains_two_steps_with_finite_losses(experiment: str, synthetic_dataset, request) -> None:
    # The SVHN experiment's conv networks take 3x32x32 colour images: its own synthetic data.
    dataset = request.getfixturevalue("synthetic_svhn") if experiment.endswith("svhn") else synthetic_dataset
    overrides = tiny_overrides(dataset, "data.labels=100")
    if experiment.startswith("vae"):  # the VAE has no discriminator to shrink
        overrides = [override for override in overrides if "disc_hidden" not in override]
    config = load_config(experiment, overrides)
    data = load_training_data(config)
    torch.manual_seed(0)
    model = build_training_model(config, data)
    for step in range(2):
        idx = torch.arange(step * 50, (step + 1) * 50)
        losses = model.training_step(make_batch(model, data, idx, data.labelled[:50]))
        assert losses and all(math.isfinite(value) for value in losses.values()), losses
    metrics = validate(model, data, WorkerContext())
    expected = {"classes": "val/error", "clusters": "val/cluster_error", None: "val/recon_bce"}[model.y_head]
    assert validation_metric(metrics)[0] == expected
    assert math.isfinite(metrics["val/recon_bce"])
