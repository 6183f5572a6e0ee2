"""The training loop every worker runs, exercised in-process (no Ray): determinism, resume, learning."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from pipeline.config import load_config
from pipeline.data.splits import load_training_data
from pipeline.loop import WorkerContext, build_training_model, train_loop, validate
from pipeline.rundir import RunDir
from pipeline.stages.train import degeneracy_warning, divergence_advice
from tests.conftest import tiny_overrides


def _train(dataset: dict[str, str], run_dir: Path, *extra: str) -> list[dict]:
    config = load_config("semisup", tiny_overrides(dataset, "data.labels=100", *extra))
    run_dir.mkdir(exist_ok=True)
    run = RunDir(run_dir)
    train_loop(config, run, WorkerContext())
    return run.read_metrics()


def _losses(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in rows]


def test_same_seed_on_one_worker_gives_identical_losses(synthetic_dataset, tmp_path) -> None:
    first = _train(synthetic_dataset, tmp_path / "a", "train.epochs=2")
    second = _train(synthetic_dataset, tmp_path / "b", "train.epochs=2")
    other_seed = _train(synthetic_dataset, tmp_path / "c", "train.epochs=2", "train.seed=7")
    assert _losses(first) == _losses(second)
    assert _losses(first) != _losses(other_seed)


def test_resumed_run_continues_from_last_checkpoint_exactly(synthetic_dataset, tmp_path) -> None:
    straight = _train(synthetic_dataset, tmp_path / "straight", "train.epochs=3")
    _train(synthetic_dataset, tmp_path / "resumed", "train.epochs=2")
    checkpoints = sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").glob("epoch-*.pt"))
    assert checkpoints == ["epoch-0001.pt", "epoch-0002.pt"]
    resumed = _train(synthetic_dataset, tmp_path / "resumed", "train.epochs=3")
    assert [row["epoch"] for row in resumed] == [1, 2, 3]  # epoch 3 appended, nothing redone
    assert _losses(resumed) == _losses(straight)


def test_only_the_last_two_epoch_checkpoints_and_the_best_are_kept(synthetic_dataset, tmp_path) -> None:
    _train(synthetic_dataset, tmp_path / "run", "train.epochs=4")
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["best.pt", "epoch-0003.pt", "epoch-0004.pt"]


@pytest.mark.slow
def test_quick_semisup_run_learns_far_below_chance(synthetic_dataset, tmp_path) -> None:
    rows = _train(synthetic_dataset, tmp_path / "run", "train.epochs=15")
    assert rows[0]["val/error"] > rows[-1]["val/error"]
    assert min(row["val/error"] for row in rows) < 30.0  # chance is 90%


def test_gpu_options_amp_and_data_on_device_run_their_device_independent_path(synthetic_dataset, tmp_path) -> None:
    # On a CPU machine these take the same code path a GPU run takes (bf16 autocast, data kept on the
    # training device); CUDA itself is exercised only where a GPU is lent.
    rows = _train(synthetic_dataset, tmp_path / "run", "train.epochs=2", "run.amp=true", "run.data_on_device=true")
    assert [row["epoch"] for row in rows] == [1, 2]
    assert all(row["train/recon_loss"] == row["train/recon_loss"] for row in rows)  # not NaN
    assert rows[-1]["val/error"] < 90.0


def test_diverging_run_stops_instead_of_training_on_nan(synthetic_dataset, tmp_path) -> None:
    rows = _train(synthetic_dataset, tmp_path / "run", "train.epochs=4", "train.lr.reconstruction=1e12")
    assert rows == []  # the NaN epoch is neither logged as an epoch nor checkpointed, and no further epochs ran
    diverged = RunDir(tmp_path / "run").divergence()
    assert diverged is not None and diverged["diverged"] == 1
    assert not all(math.isfinite(value) for value in diverged["losses"].values())
    assert list((tmp_path / "run" / "checkpoints").glob("*.pt")) == []


def test_every_epoch_reports_categories_used_and_style_spread(synthetic_dataset, tmp_path) -> None:
    [row] = _train(synthetic_dataset, tmp_path / "run", "train.epochs=1")
    assert 1 <= row["val/clusters_used"] <= 10
    assert 0 <= row["val/y_entropy"] <= math.log(10) + 1e-6
    assert row["val/z_std_ratio"] > 0


def test_degenerate_warning_fires_on_a_collapsed_model_and_not_on_a_healthy_one(synthetic_dataset) -> None:
    config = load_config("cluster16", tiny_overrides(synthetic_dataset, "model.params.n_clusters=10"))
    data = load_training_data(config)
    model = build_training_model(config, data)
    with torch.no_grad():  # every example into category 3, style codes at the prior's scale
        model.encoder.logits_head.bias[3] = 1e3
        model.encoder.code_head.weight.normal_(0, 1.0)
    collapsed = validate(model, data, WorkerContext())
    assert collapsed["val/clusters_used"] == 1
    warning = degeneracy_warning(config, collapsed)
    assert warning is not None and "only 1 of 10 categories used" in warning and "y_batchnorm" in warning
    healthy = {"val/clusters_used": 10, "val/z_std_ratio": 1.1}
    assert degeneracy_warning(config, healthy) is None
    assert "spread" in degeneracy_warning(config, {**healthy, "val/z_std_ratio": 0.05})


def test_divergence_advice_names_each_diverged_phase_s_rate_and_a_clip_for_it() -> None:
    unclipped = divergence_advice(load_config("cluster16"), {"recon", "gen_y"})
    # cluster16 clips the reconstruction at 100 and leaves the generator unclipped
    for override in ("train.lr.reconstruction=0.001", "train.lr.generator=0.01",
                     "train.clip_grad_norm.reconstruction=50", "train.clip_grad_norm.generator=5"):
        assert f"--set {override}" in unclipped
    assert "discriminator" not in unclipped
    clipped = divergence_advice(load_config("dimred-2d-unsup"), {"recon"})  # every phase clipped at 5
    assert "--set train.lr.reconstruction=0.001" in clipped and "generator" not in clipped
    assert "clip the gradients harder: --set train.clip_grad_norm.reconstruction=2.5" in clipped


def test_a_run_killed_between_checkpoint_and_metrics_row_resumes_with_that_row(synthetic_dataset, tmp_path) -> None:
    _train(synthetic_dataset, tmp_path / "run", "train.epochs=2")
    run = RunDir(tmp_path / "run")
    rows = run.read_metrics()
    run.metrics_path.write_text("".join(json.dumps(row) + "\n" for row in rows[:1]))  # epoch 2's row never written
    reported: list[dict] = []
    config = load_config("semisup", tiny_overrides(synthetic_dataset, "data.labels=100", "train.epochs=2"))
    train_loop(config, run, WorkerContext(), report=reported.append)
    assert [row["epoch"] for row in run.read_metrics()] == [1, 2]  # not trained again: the checkpoint holds it
    assert _losses(run.read_metrics()) == _losses(rows)
    assert [row["epoch"] for row in reported] == [2]  # reported once, now (a sweep ranks trials on it)


def test_a_checkpoint_set_aside_retrains_its_epoch_without_duplicate_rows(synthetic_dataset, tmp_path) -> None:
    straight = _train(synthetic_dataset, tmp_path / "run", "train.epochs=3")
    last = tmp_path / "run" / "checkpoints" / "epoch-0003.pt"
    last.rename(last.with_name("epoch-0003.pt.damaged"))
    resumed = _train(synthetic_dataset, tmp_path / "run", "train.epochs=3")
    assert [row["epoch"] for row in resumed] == [1, 2, 3]
    assert _losses(resumed) == _losses(straight)  # epoch 3 trained again from epoch 2's checkpoint, identically


def test_a_resume_with_new_rates_trains_on_with_them(synthetic_dataset, tmp_path) -> None:
    _train(synthetic_dataset, tmp_path / "run", "train.epochs=1")
    same = _train(synthetic_dataset, tmp_path / "same", "train.epochs=2")
    lowered = _train(synthetic_dataset, tmp_path / "run", "train.epochs=2", "train.lr.reconstruction=1e-6")
    assert _losses(lowered)[0] == _losses(same)[0]
    # At a millionth of the rate the autoencoder barely moves in epoch 2, where the saved rate keeps improving it.
    assert lowered[1]["train/recon_loss"] > same[1]["train/recon_loss"]
