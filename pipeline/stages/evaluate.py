"""Stage 3: the paper's test-set numbers for a trained run, written to evaluation.json.

Every model is scored on reconstruction, Parzen log-likelihood, degeneracy and prior fit (EVERY_MODEL); which
evaluations of EVALUATIONS a variant adds (classification, clustering, ...) its plan says (pipeline.plans).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch

from aae import metrics as m
from aae.variants.base import AAEModel
from pipeline.config import Config
from pipeline.data.splits import Split, load_eval_split
from pipeline.plans import plan_for
from pipeline.rundir import RunDir, atomic_write_text
from pipeline.stages import EVALUATION_FILE
from pipeline.stages.trained import CHUNK, batched, load_trained_model

# Test digits whose styles the style-grid measure renders as every class.
STYLE_GRID_DIGITS = 1000
PARZEN_OFF_NOTE = ("not measured (evaluate.parzen is false): a Parzen window over raw pixels says little about "
                   "colour images such as SVHN's, and the paper reports it only for MNIST and TFD")


@dataclass
class Inputs:
    """What every evaluation reads: the config, the trained model and the test split. The training split, the
    model's q(y|x) on the test split and its log-odds on the training split are computed once, by the first
    evaluation that asks (classification or clustering, the collapse diagnostics and the cluster heads read them)."""

    config: Config
    model: AAEModel
    test: Split

    @cached_property
    def train(self) -> Split:
        """The training split, as training saw it (data.limit applies)."""
        return load_eval_split(self.config, "train")

    @cached_property
    def test_probs(self) -> torch.Tensor:
        """q(y|x) on the test split (models with a y head)."""
        return batched(self.model.classify, self.test.x)

    @cached_property
    def judge(self) -> tuple[torch.nn.Module, float]:
        """The reference classifier that reads generated images (trained on the training split), and its error %
        on the test split: the style grid and the cluster heads are read only where that error is small."""
        judge = reference_judge(self.config, self.train)
        with torch.no_grad():
            error = m.classification_error(batched(judge, self.test.x).softmax(1), self.test.y)
        return judge, error

    @cached_property
    def train_log_odds(self) -> torch.Tensor:
        """log(q / (1 - q)) of q(y|x) on the training split (models with a y head), for the paper's cluster
        labels: unlike q in float32 it does not saturate, so the most confident example is not a tie."""
        return batched(self.model.category_log_odds, self.train.x)


@dataclass
class Outcome:
    """Flat `test/*` metrics, named tables ({"columns": [...], "rows": [[...], ...]}) and notes on what was
    not measured and why."""

    metrics: dict[str, float] = field(default_factory=dict)
    tables: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    def merge(self, other: Outcome) -> None:
        """Add another evaluation's metrics, tables and notes to this one."""
        self.metrics.update(other.metrics)
        self.tables.update(other.tables)
        self.notes.update(other.notes)


def reconstruction(inputs: Inputs) -> Outcome:
    """test/recon_mse (per pixel) and test/recon_bce (summed over pixels) of the model's reconstruction."""
    model, test = inputs.model, inputs.test
    labels = torch.tensor(test.y)  # only label-fed decoders (the supervised AAE) read them
    x_hat = torch.cat([model.reconstruction(x, y)
                       for x, y in zip(test.x.split(CHUNK), labels.split(CHUNK), strict=True)])
    return Outcome({f"test/{k}": v for k, v in m.reconstruction_errors(test.x, x_hat).items()})


def parzen(inputs: Inputs) -> Outcome:
    """Parzen-window log-likelihood of the test set from generated samples, σ chosen on validation images."""
    config, model = inputs.config, inputs.model
    if not config.evaluate.parzen:
        return Outcome(notes={"parzen": PARZEN_OFF_NOTE})
    n = config.evaluate.parzen_samples
    with torch.random.fork_rng():  # the priors draw from the global RNG; seed it without disturbing the caller
        torch.manual_seed(config.train.seed)
        samples = torch.cat([model.sample(min(CHUNK, n - i)).cpu() for i in range(0, n, CHUNK)])
    validation = load_eval_split(config, "validation", limit=config.evaluate.parzen_validation)
    sigma, _ = m.select_parzen_sigma(samples, validation.x)
    return Outcome({"test/parzen_ll": m.parzen_log_likelihood(samples, inputs.test.x, sigma),
                    "test/parzen_sigma": sigma})


def classification(inputs: Inputs) -> Outcome:
    """test/error: q(y|x) as a classifier, with the error of each class as a table."""
    probs = inputs.test_probs
    return Outcome({"test/error": m.classification_error(probs, inputs.test.y)},
                   {"per_class_error": _per_class_table(probs, inputs.test.y)})


def clustering(inputs: Inputs) -> Outcome:
    """The paper's cluster error (each cluster takes the label of its most confident training example), the
    majority-vote error, NMI and ARI; per-class errors under the paper's mapping as a table."""
    train, train_log_odds = inputs.train, inputs.train_log_odds
    test_probs = inputs.test_probs
    report = m.clustering_report(train_log_odds, train.y, test_probs, inputs.test.y)
    mapping = m.paper_cluster_labels(train_log_odds, train.y)
    predicted = mapping[test_probs.argmax(1).numpy()]
    # What each cluster stands for travels with the model (load_run, predict's cluster_label column).
    stands_for = {"columns": ["cluster", "label"], "rows": [[i, int(label)] for i, label in enumerate(mapping)]}
    return Outcome({f"test/{k}": v for k, v in report.items()},
                   {"per_class_error": _per_class_table(predicted, inputs.test.y), "cluster_labels": stands_for})


def dim_reduction(inputs: Inputs) -> Outcome:
    """test/dimred_error: the classification error when trained with labels, else the paper's cluster error."""
    uses_labels = inputs.model.config.use_labels
    outcome = classification(inputs) if uses_labels else clustering(inputs)
    outcome.metrics["test/dimred_error"] = outcome.metrics["test/error" if uses_labels else "test/cluster_error"]
    return outcome


def degeneracy(inputs: Inputs) -> Outcome:
    """The collapse diagnostics on the test set: categories used and their entropy (models with a y head);
    for models with a Gaussian style prior, the style codes' spread relative to the prior's and their mean
    and covariance against the prior's (the paper's Fig. 2 left as numbers)."""
    model, x = inputs.model, inputs.test.x
    metrics: dict[str, float] = {}
    if model.y_head is not None:
        usage = m.category_usage(inputs.test_probs)
        metrics.update({f"test/{key}": value for key, value in usage.items()})
    styles = model.style_codes(x, CHUNK)
    if styles is not None:
        metrics["test/z_std_ratio"] = m.spread_ratio(*styles)
        metrics.update({f"test/{key}": value for key, value in m.gaussian_fit(*styles).items()})
    return Outcome(metrics)


def prior_fit(inputs: Inputs) -> Outcome:
    """Whether the test codes fill a prior with components (mixture, swiss roll), the paper's Fig. 2 right
    and 4 as numbers: the components holding codes, the share of codes on the prior and, for
    label-regularised models, on their own class's component. Gaussian style priors: see degeneracy."""
    model, x = inputs.model, inputs.test.x
    prior = getattr(model, "prior", None)
    if not hasattr(prior, "locate"):
        return Outcome()
    located = [prior.locate(model.encode(chunk)) for chunk in x.split(CHUNK)]
    component, on_prior = (torch.cat([part[i].cpu() for part in located]) for i in (0, 1))
    labels = inputs.test.y if model.label_needs != "none" else None  # the label-regularised AAE's prior
    fit = m.components_fit(component, on_prior, prior.n_components, labels)
    return Outcome({f"test/{k}": v for k, v in fit.items()})


def cluster_heads(inputs: Inputs) -> Outcome:
    """The cluster heads (visualize's cluster_heads.png, first column: each category decoded with z = 0) as
    numbers: the share a reference classifier reads as the digit their cluster stands for (the paper's
    mapping, as in test/cluster_error), and how many different digits they show. 100% and every class when y
    sets the digit; one digit, right for about one cluster in ten, when the decoder ignores y."""
    stands_for = m.paper_cluster_labels(inputs.train_log_odds, inputs.train.y)
    judge, judge_error = inputs.judge
    if judge_error > JUDGE_MAX_ERROR:
        return Outcome(notes={"cluster_heads": _unread("cluster heads", judge_error)})
    with torch.no_grad():
        read = judge(inputs.model.decoded_heads().cpu()).argmax(1).numpy()
    return Outcome({"test/heads_read_as_cluster": 100.0 * float(np.mean(read == stands_for)),
                    "test/distinct_heads": len(set(read.tolist()))})


# Above this test error (%) the reference classifier is no judge of generated images: on MNIST it misreads about
# 2% of the test digits, on a harder dataset (Fashion-MNIST: about 13%) its readings would measure itself.
JUDGE_MAX_ERROR = 5.0


def _unread(what: str, judge_error: float) -> str:
    return (f"not read: the reference classifier that reads the {what} (trained on this run's training images) "
            f"misreads {judge_error:.1f}% of the test images, above {JUDGE_MAX_ERROR:g}%, so its reading of generated "
            "images would say more about it than about the model")


# Below this share of heads read as their cluster's digit, the heads figure shows the style code's digit, not
# the clusters' (cluster16 without style_drop: 6-44%; with it: 87.5-100%; docs/deviations.md).
HEADS_RIGHT_FLOOR = 50.0


def heads_warning(metrics: dict[str, Any]) -> str | None:
    """The warning for cluster heads that do not show their clusters (the decoder barely reads y: trained, it
    draws the digit from the style code), naming the keys that fix it; None when they do or were not scored."""
    right = metrics.get("test/heads_read_as_cluster")
    if right is None or right >= HEADS_RIGHT_FLOOR:
        return None
    distinct = metrics.get("test/distinct_heads")
    return (
        f"warning: only {right:.0f}% of the cluster heads (cluster_heads.png: each category decoded with z = 0) "
        f"are read as their cluster's digit (distinct digits among them: {distinct}): the decoder barely reads y. "
        "The clusters themselves are scored from q(y|x) and are unaffected. For heads that show the clusters: "
        "more epochs, and model.params.style_drop=0.1 with model.params.y_scale=2 (cluster16's config; on "
        "cluster30 it leaves fewer categories in use, see docs/deviations.md)."
    )


def reference_judge(config: Config, train: Split) -> torch.nn.Module:
    """The small MLP digit classifier, trained on the training digits, that reads generated images."""
    n_classes = int(train.y.max()) + 1
    return m.fit_reference_classifier(train.x, torch.tensor(train.y, dtype=torch.int64), n_classes,
                                      seed=config.train.seed)


def style_grid(inputs: Inputs) -> Outcome:
    """test/style_grid_accuracy: the share of style-grid cells (test digits' styles rendered as each class,
    visualize's style_grid.png) that a reference classifier trained on the training digits reads as their
    column's class: 100% when y sets the digit and z only the style; 10% when the decoder ignores y."""
    model = inputs.model
    judge, judge_error = inputs.judge
    if judge_error > JUDGE_MAX_ERROR:
        return Outcome({"test/style_grid_judge_error": judge_error},
                       notes={"style_grid": _unread("style grid", judge_error)})
    test_x, test_y = inputs.test.x[:STYLE_GRID_DIGITS], torch.tensor(inputs.test.y[:STYLE_GRID_DIGITS])
    rendered = torch.cat([model.render_as_each_category(chunk).cpu() for chunk in test_x.split(CHUNK // 10)])
    with torch.no_grad():
        read = judge(rendered.reshape(-1, rendered.shape[-1])).argmax(1).reshape(rendered.shape[:2])
    columns = torch.arange(rendered.shape[1])
    return Outcome({"test/style_grid_accuracy": 100.0 * float((read == columns).float().mean()),
                    "test/style_grid_judge_error": judge_error,
                    "test/style_grid_kept_digit": 100.0 * float((read == test_y[:, None]).float().mean())})


Evaluation = Callable[[Inputs], Outcome]
EVERY_MODEL: tuple[Evaluation, ...] = (reconstruction, parzen, degeneracy, prior_fit)
# The evaluations a variant's plan may name (pipeline.plans), by function name.
EVALUATIONS: dict[str, Evaluation] = {
    f.__name__: f for f in (classification, clustering, cluster_heads, dim_reduction, style_grid)
}


def evaluate(config: Config, run: RunDir) -> dict[str, Any]:
    """Score the run's best checkpoint on the test split; writes evaluation.json and returns {"metrics": ...}."""
    test = load_eval_split(config, "test")
    trained = load_trained_model(config, run, input_dim=test.x.shape[1])
    inputs = Inputs(config, trained.model, test)
    outcome, seconds = Outcome(), {}
    for evaluation in (*(EVALUATIONS[name] for name in plan_for(config.model.variant).evaluations), *EVERY_MODEL):
        started = time.perf_counter()
        outcome.merge(evaluation(inputs))
        seconds[evaluation.__name__] = round(time.perf_counter() - started, 2)
    payload = {
        "metrics": {k: _json_number(v) for k, v in outcome.metrics.items()},
        "tables": outcome.tables,
        "notes": outcome.notes,
        "checkpoint": {"file": str(trained.checkpoint.relative_to(run.path)), "epoch": trained.epoch},
        "seconds": seconds,
    }
    atomic_write_text(run.path / EVALUATION_FILE, json.dumps(payload, indent=2) + "\n")
    return {"metrics": outcome.metrics}


def read_evaluation(run: RunDir) -> dict[str, Any] | None:
    """A run's evaluation.json, or None if it was never evaluated."""
    path = run.path / EVALUATION_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _per_class_table(pred: Any, labels: np.ndarray) -> dict[str, list[Any]]:
    n_classes = int(labels.max()) + 1
    errors = m.per_class_error(pred, labels, n_classes)
    counts = np.bincount(labels, minlength=n_classes)
    rows = [[c, int(counts[c]), _json_number(errors[c])] for c in range(n_classes)]
    return {"columns": ["class", "test examples", "error %"], "rows": rows}


def _json_number(value: float) -> float | None:
    """JSON has no NaN or infinity: such a value is written as null."""
    return float(value) if math.isfinite(value) else None
