"""Adding a variant of the simple kind is one module plus one YAML: nothing else in the repository changes.

ToyAAE below stands for that module (a SingleCodeAAE with its own config and prior); the experiment YAML names
it by import path, and `aae-pipeline run` trains, evaluates and draws it like any built-in variant.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

from aae.batch import Batch
from aae.optim import OptimConfig
from aae.variants import VARIANTS, build_model, register_variant
from aae.variants.semi_supervised import SemiSupervisedAAE, SemiSupervisedConfig
from aae.variants.single_code import SingleCodeAAE, SingleCodeConfig
from pipeline.plans import DEFAULT_PLAN, plan_for
from tests.conftest import tiny_overrides


@dataclass
class ToyConfig(SingleCodeConfig):
    """A 3-D code under a uniform prior on [-1, 1]^3."""

    z_dim: int = 3
    prior: str = "uniform"


class ToyAAE(SingleCodeAAE):
    """The unsupervised AAE's shape with another prior: all a simple variant has to say."""

    config_class = ToyConfig
    label_needs = "none"


class ToyClassesAAE(SemiSupervisedAAE):
    """A variant no table names whose y head gives classes (y_head = "classes", from the class it extends)."""


def test_a_registered_variant_builds_and_trains_by_its_short_name(monkeypatch) -> None:
    monkeypatch.setattr("aae.variants.VARIANTS", dict(VARIANTS))  # the registration ends with the test
    import aae.variants

    register_variant("toy", ToyAAE)
    assert "toy" in aae.variants.VARIANTS
    model = build_model("toy", {"input_dim": 12, "hidden": (16,), "disc_hidden": (16,)})
    model.configure_optimizers(OptimConfig())
    losses = model.training_step(Batch(torch.rand(8, 12)))
    assert set(losses) == {"recon_loss", "disc_loss", "gen_loss"}
    assert model.prior_sample(model.prior, 500).abs().max() <= 1  # the uniform prior the config named
    with pytest.raises(ValueError, match="taken"):
        register_variant("unsupervised", ToyAAE)
    with pytest.raises(ValueError, match="unknown key 'n_classes'"):
        build_model("toy", {"n_classes": 3})


def test_an_import_path_names_a_variant_without_registering_it() -> None:
    assert type(build_model(f"{__name__}:ToyAAE", {"input_dim": 12})) is ToyAAE
    with pytest.raises(ValueError, match="not an AAEModel"):
        build_model(f"{__name__}:ToyConfig")
    with pytest.raises(ValueError, match="cannot import variant"):
        build_model(f"{__name__}:Missing")


def test_a_new_variant_gets_the_evaluations_its_attributes_give() -> None:
    assert plan_for(f"{__name__}:ToyAAE") == DEFAULT_PLAN  # no y head: every model's evaluations and figures
    assert build_model(f"{__name__}:ToyClassesAAE", {"input_dim": 12, "hidden": (8,)}).y_head == "classes"
    plan = plan_for(f"{__name__}:ToyClassesAAE")
    assert plan.evaluations == ("classification", "style_grid")  # a class head on a decoder that reads y
    assert plan.paper_tables == ("semisup", "parzen")
    assert plan.search_space is None  # a default search space is stated per built-in variant, never guessed


def test_a_categorical_variant_whose_y_head_contradicts_its_labels_is_refused() -> None:
    class Confused(ToyClassesAAE):
        label_needs = "none"  # no supervised phase: its y head would give clusters

    with pytest.raises(TypeError, match="y_head='classes'.*gives 'clusters'"):
        Confused(SemiSupervisedConfig(input_dim=12, hidden=(8,)))


@pytest.mark.slow
def test_run_trains_evaluates_and_draws_a_variant_named_by_its_yaml(ray_cluster, synthetic_dataset, tmp_path) -> None:
    experiment = tmp_path / "toy.yaml"
    experiment.write_text(f"description: a toy variant\nmodel:\n  variant: {__name__}:ToyAAE\n"
                          "  params: {z_dim: 3}\n")
    run_dir = tmp_path / "run"
    sets = [arg for override in tiny_overrides(synthetic_dataset) for arg in ("--set", override)]
    # The CLI and the cluster's workers import the variant's module (this test file) from this checkout.
    result = ray_cluster.cli("run", str(experiment), "--epochs", "1", "--workers", "1", "--run-dir", str(run_dir),
                             "--address", ray_cluster.address, "--wandb", "disabled", *sets, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert {manifest["stages"][s]["status"] for s in ("train", "evaluate", "visualize")} == {"done"}
    assert manifest["metrics"]["epoch"] == 1 and "train/disc_loss" in manifest["metrics"]
    metrics = json.loads((run_dir / "evaluation.json").read_text())["metrics"]
    assert {"test/recon_bce", "test/parzen_ll"} <= set(metrics)  # every model's evaluations
    assert (run_dir / "figures").is_dir() and any((run_dir / "figures").iterdir())
