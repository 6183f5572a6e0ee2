"""The evaluate stage on tiny models trained in-process (no Ray) on the synthetic dataset."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from aae.metrics import PARZEN_SIGMAS, category_log_odds
from pipeline.config import Config, config_to_yaml, load_config
from pipeline.data.splits import load_eval_split
from pipeline.errors import UserError
from pipeline.loop import WorkerContext, train_loop
from pipeline.rundir import CONFIG_FILE, RunDir
from pipeline.stages.evaluate import Inputs, cluster_heads, evaluate, heads_warning, style_grid
from pipeline.stages.trained import load_trained_model
from tests.conftest import tiny_overrides

# Few Parzen samples keep each evaluation to about a second.
FAST_EVAL = ("evaluate.parzen_samples=400", "evaluate.parzen_validation=100")


def trained_run(dataset: dict[str, str], directory: Path, experiment: str, *extra: str) -> tuple[Config, RunDir]:
    """Train a tiny model of `experiment` in-process; the run directory looks as `aae-pipeline run` leaves it."""
    config = load_config(experiment, tiny_overrides(dataset, "train.epochs=2", *FAST_EVAL, *extra))
    directory.mkdir(parents=True)
    (directory / CONFIG_FILE).write_text(config_to_yaml(config))
    run = RunDir(directory)
    train_loop(config, run, WorkerContext())
    return config, run


@pytest.fixture(scope="module")
def semisup_run(synthetic_dataset, tmp_path_factory) -> tuple[Config, RunDir]:
    return trained_run(synthetic_dataset, tmp_path_factory.mktemp("eval") / "semisup", "semisup", "data.labels=100")


def test_semisup_test_error_is_the_error_of_classify_on_the_test_split(semisup_run) -> None:
    config, run = semisup_run
    returned = evaluate(config, run)["metrics"]
    written = json.loads((run.path / "evaluation.json").read_text())
    assert written["metrics"] == returned
    # Recount by hand from the best checkpoint's q(y|x) on every test image.
    test = load_eval_split(config, "test")
    model = load_trained_model(config, run, test.x.shape[1]).model
    wrong = int((model.classify(test.x).argmax(1).numpy() != test.y).sum())
    assert returned["test/error"] == pytest.approx(100 * wrong / len(test.y))
    # The per-class table splits the same mistakes: its errors, weighted by class size, add up to test/error.
    rows = written["tables"]["per_class_error"]["rows"]
    assert [row[0] for row in rows] == list(range(10))
    assert sum(row[1] for row in rows) == len(test.y)
    assert sum(row[1] * row[2] / 100 for row in rows) == pytest.approx(wrong)
    assert written["checkpoint"]["epoch"] in (1, 2)


def test_the_test_set_reports_categories_used_and_style_spread(semisup_run) -> None:
    config, run = semisup_run
    metrics = evaluate(config, run)["metrics"]
    test = load_eval_split(config, "test")
    model = load_trained_model(config, run, test.x.shape[1]).model
    shares = np.bincount(model.classify(test.x).argmax(1).numpy(), minlength=10) / len(test.y)
    assert metrics["test/clusters_used"] == int((shares >= 0.005).sum())
    codes = model.encode(test.x)[:, 10:]  # [softmax(y), z]: the style z
    assert metrics["test/z_std_ratio"] == pytest.approx(codes.std(0, unbiased=False).mean().item() / 5.0, rel=1e-3)


def test_every_model_gets_reconstruction_and_a_finite_parzen_likelihood(semisup_run) -> None:
    metrics = evaluate(*semisup_run)["metrics"]
    assert 0 < metrics["test/recon_mse"] < 1
    assert metrics["test/recon_bce"] > 0
    assert math.isfinite(metrics["test/parzen_ll"])
    assert metrics["test/parzen_sigma"] in PARZEN_SIGMAS
    assert not {"test/cluster_error", "test/dimred_error"} & set(metrics)  # a classifier, not a clusterer


def test_clustering_run_gets_cluster_metrics_in_range(synthetic_dataset, tmp_path) -> None:
    config, run = trained_run(synthetic_dataset, tmp_path / "cluster", "cluster16")
    metrics = evaluate(config, run)["metrics"]
    assert "test/error" not in metrics  # clusters are not classes
    for key in ("test/cluster_error", "test/cluster_error_majority"):
        assert 0 <= metrics[key] <= 100
    assert 0 < metrics["test/nmi"] <= 1  # two epochs already tie the clusters to the classes a little
    assert 0 <= metrics["test/heads_read_as_cluster"] <= 100 and 1 <= metrics["test/distinct_heads"] <= 10
    assert -1 <= metrics["test/ari"] <= 1
    assert math.isfinite(metrics["test/parzen_ll"])


@pytest.mark.parametrize(
    ("experiment", "extra", "same_as"),
    [("dimred-2d", ("data.labels=100",), "test/error"), ("dimred-2d-unsup", (), "test/cluster_error")],
)
def test_dim_reduction_error_is_classification_with_labels_and_cluster_error_without(
    synthetic_dataset, tmp_path, experiment: str, extra: tuple[str, ...], same_as: str
) -> None:
    config, run = trained_run(synthetic_dataset, tmp_path / experiment, experiment, *extra)
    metrics = evaluate(config, run)["metrics"]
    assert metrics["test/dimred_error"] == metrics[same_as]
    assert ("test/nmi" in metrics) == (same_as == "test/cluster_error")


def test_a_run_without_checkpoint_is_a_user_error_naming_the_fix(synthetic_dataset, tmp_path) -> None:
    config = load_config("semisup", tiny_overrides(synthetic_dataset))
    with pytest.raises(UserError, match="no trained checkpoint") as err:
        evaluate(config, RunDir(tmp_path))
    assert "--resume" in err.value.fix
    assert not (tmp_path / "evaluation.json").exists()


def test_eval_split_flattens_uint8_images_to_unit_floats(synthetic_dataset) -> None:
    config = load_config("unsup-gaussian", tiny_overrides(synthetic_dataset, "data.limit=50"))
    train_split = load_eval_split(config, "train")
    assert train_split.x.shape == (50, 784)  # data.limit applies to train, as in training
    assert float(train_split.x.min()) >= 0 and float(train_split.x.max()) <= 1
    assert len(load_eval_split(config, "test", limit=7).y) == 7
    assert np.issubdtype(train_split.y.dtype, np.integer)


def exemplars(test_x: torch.Tensor, test_y: np.ndarray) -> torch.Tensor:
    """One real test image of each class: what a decoder that obeys y would draw."""
    return torch.stack([test_x[int(np.flatnonzero(test_y == c)[0])] for c in range(10)])


class _GridModel:
    """Stands in for a trained style/content model: renders each test digit's style as every class."""

    def __init__(self, test_x: torch.Tensor, test_y: np.ndarray, reads_y: bool) -> None:
        self.reads_y = reads_y
        self.exemplars = exemplars(test_x, test_y)

    def render_as_each_category(self, x: torch.Tensor) -> torch.Tensor:
        if self.reads_y:
            return self.exemplars.expand(len(x), -1, -1)
        return x[:, None].expand(-1, 10, -1)  # the decoder ignores y: the same digit in every column


def test_style_grid_accuracy_is_high_when_y_sets_the_digit_and_near_chance_when_ignored(synthetic_dataset) -> None:
    config = load_config("supervised", tiny_overrides(synthetic_dataset))
    test = load_eval_split(config, "test")
    obeys = style_grid(Inputs(config, _GridModel(test.x, test.y, reads_y=True), test)).metrics
    ignores = style_grid(Inputs(config, _GridModel(test.x, test.y, reads_y=False), test)).metrics
    assert obeys["test/style_grid_judge_error"] < 10  # the judge reads real digits
    assert obeys["test/style_grid_accuracy"] > 90
    assert ignores["test/style_grid_accuracy"] < 20  # right only in the column of the digit's own class
    assert ignores["test/style_grid_kept_digit"] > 90


class _HeadsModel:
    """Stands in for a trained clustering model with a cluster per class: q(y|x) by the nearest class exemplar;
    its heads are the exemplars (a decoder that reads y) or one exemplar for every cluster (one that does not)."""

    def __init__(self, test_x: torch.Tensor, test_y: np.ndarray, reads_y: bool) -> None:
        self.reads_y = reads_y
        self.exemplars = exemplars(test_x, test_y)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(-torch.cdist(x, self.exemplars), dim=1)

    def category_log_odds(self, x: torch.Tensor) -> torch.Tensor:
        return category_log_odds(-torch.cdist(x, self.exemplars))

    def decoded_heads(self) -> torch.Tensor:
        return self.exemplars if self.reads_y else self.exemplars[:1].expand(10, -1)


def test_cluster_heads_are_read_as_their_clusters_digit_only_when_the_decoder_reads_y(synthetic_dataset) -> None:
    config = load_config("cluster16", tiny_overrides(synthetic_dataset))
    test = load_eval_split(config, "test")
    obeys = cluster_heads(Inputs(config, _HeadsModel(test.x, test.y, reads_y=True), test)).metrics
    ignores = cluster_heads(Inputs(config, _HeadsModel(test.x, test.y, reads_y=False), test)).metrics
    assert obeys == {"test/heads_read_as_cluster": 100.0, "test/distinct_heads": 10}
    assert ignores["test/heads_read_as_cluster"] <= 20 and ignores["test/distinct_heads"] == 1
    assert heads_warning(obeys) is None and heads_warning({"test/error": 3.0}) is None
    warning = heads_warning(ignores)
    assert warning is not None and "distinct digits among them: 1" in warning and "model.params.style_drop" in warning


def test_generated_images_are_not_read_where_the_reference_classifier_misreads_real_ones(synthetic_dataset) -> None:
    config = load_config("cluster16", tiny_overrides(synthetic_dataset))
    test = load_eval_split(config, "test")
    inputs = Inputs(config, _HeadsModel(test.x, test.y, reads_y=True), test)
    inputs.judge = (inputs.judge[0], 13.0)  # as on Fashion-MNIST: the judge misreads 13% of the real test images
    for evaluation, what in ((style_grid, "style_grid"), (cluster_heads, "cluster_heads")):
        outcome = evaluation(inputs)
        assert not {"test/style_grid_accuracy", "test/heads_read_as_cluster"} & set(outcome.metrics)
        assert "misreads 13.0% of the test images, above 5%" in outcome.notes[what]


@pytest.mark.parametrize(
    ("experiment", "keys"),
    [("unsup-mixture", {"test/components_used", "test/codes_on_prior"}),
     ("labelreg-swissroll --set data.labels=500",
      {"test/components_used", "test/codes_on_prior", "test/codes_on_own_component"}),
     ("unsup-gaussian", {"test/code_mean_error", "test/code_cov_error"})],
)
def test_every_2d_prior_model_reports_how_its_test_codes_fit_the_prior(
    synthetic_dataset, tmp_path, experiment: str, keys: set[str]
) -> None:
    name, *extra = experiment.split(" --set ")
    config, run = trained_run(synthetic_dataset, tmp_path / name, name, *extra)
    metrics = evaluate(config, run)["metrics"]
    assert keys <= set(metrics)
    for key in keys - {"test/components_used", "test/code_mean_error", "test/code_cov_error"}:
        assert 0 <= metrics[key] <= 1
