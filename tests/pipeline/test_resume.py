"""What a resume may change and what it refuses, and damaged checkpoints: each said in one line, before Ray starts
and before anything in the run directory is written. Run directories are made in-process (no Ray)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline import chain
from pipeline.config import config_to_yaml, load_config
from pipeline.rundir import CONFIG_FILE, LOCK_FILE, RunDir, atomic_write_text
from tests import helpers
from tests.helpers import run_cli


def trained_run(dataset: dict[str, str], path: Path) -> RunDir:
    """A semisup run directory (100 labels) as `aae-pipeline run` leaves it after two epochs, not evaluated."""
    return helpers.trained_run(dataset, path, "semisup", "data.labels=100", evaluated=False)


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file of a run directory but the lock a command takes on it."""
    return {str(file.relative_to(path)): file.read_bytes() for file in sorted(path.rglob("*"))
            if file.is_file() and file.name != LOCK_FILE}


@pytest.fixture
def no_ray(tmp_path) -> dict[str, str]:
    """A private RAY_TMPDIR: a Ray started by the command would leave its session there."""
    (tmp_path / "ray-tmp").mkdir()
    return {"RAY_TMPDIR": str(tmp_path / "ray-tmp")}


def assert_one_line_refusal(result, *expected: str) -> str:
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr + result.stdout
    for text in expected:
        assert text in line, line
    return line


@pytest.mark.slow
def test_a_resume_that_changes_the_model_is_refused_before_anything_is_written(synthetic_dataset, tmp_path,
                                                                              no_ray) -> None:
    run = trained_run(synthetic_dataset, tmp_path / "run")
    before = snapshot(run.path)
    result = run_cli("run", "--resume", str(run.path), "--set", "model.params.z_dim=5", "--set", "train.seed=3",
                     cwd=tmp_path, env=no_ray)
    line = assert_one_line_refusal(result, "--resume cannot change model.params.z_dim (10 → 5), train.seed (0 → 3)",
                                   "a resume may change train.epochs, train.lr.*")
    assert "run.*" in line
    assert snapshot(run.path) == before
    assert not list(Path(no_ray["RAY_TMPDIR"]).iterdir())  # refused before Ray started


def test_a_resume_records_the_training_settings_it_changed(synthetic_dataset, tmp_path, monkeypatch) -> None:
    run = trained_run(synthetic_dataset, tmp_path / "run")
    monkeypatch.setattr(chain, "connect_ray", lambda config: None)
    monkeypatch.setattr(chain, "_run_stage", lambda stage, config, run, digest, redo: None)
    config, resumed = chain.resolve_run(None, ["train.lr.reconstruction=0.001"], {"train.epochs": 3}, None,
                                             run.path)
    chain.run_chain(config, resumed, stages=("train",))
    [change] = run.read_manifest()["config_changes"]
    assert change == {"after_epoch": 2, "changed": {"train.epochs": [2, 3],
                                                    "train.lr.reconstruction": [None, 0.001]}}
    assert load_config(str(run.path / CONFIG_FILE)).train.lr.reconstruction == 0.001


@pytest.mark.slow
def test_a_damaged_last_checkpoint_is_named_with_the_way_back_before_ray_starts(synthetic_dataset, tmp_path,
                                                                              no_ray) -> None:
    run = trained_run(synthetic_dataset, tmp_path / "run")
    last = run.checkpoint_dir / "epoch-0002.pt"
    os.truncate(last, 4000)
    before = snapshot(run.path)
    result = run_cli("run", "--resume", str(run.path), "--epochs", "3", cwd=tmp_path, env=no_ray)
    assert_one_line_refusal(result, f"{last} is damaged (not a complete checkpoint: truncated or overwritten)",
                            "set it aside to resume from epoch-0001.pt, which the run keeps",
                            f"`mv {last} {last}.damaged`", "--from train")
    assert snapshot(run.path) == before
    assert not list(Path(no_ray["RAY_TMPDIR"]).iterdir())


@pytest.mark.slow
def test_a_damaged_best_checkpoint_is_named_by_eval_before_ray_starts(synthetic_dataset, tmp_path, no_ray) -> None:
    run = trained_run(synthetic_dataset, tmp_path / "run")
    run.best_checkpoint.write_bytes(b"")
    result = run_cli("eval", str(run.path), "--force", cwd=tmp_path, env=no_ray)
    assert_one_line_refusal(result, f"{run.best_checkpoint} is damaged (empty)",
                            f"aae-pipeline run --resume {run.path} --from train")
    assert not list(Path(no_ray["RAY_TMPDIR"]).iterdir())


def test_eval_of_an_unfinished_run_warns_that_the_model_is_partial(synthetic_dataset, tmp_path, monkeypatch,
                                                                   capsys) -> None:
    run = trained_run(synthetic_dataset, tmp_path / "run")
    planned = load_config(str(run.path / CONFIG_FILE), ["train.epochs=5"])
    atomic_write_text(run.path / CONFIG_FILE, config_to_yaml(planned))
    run.record_stage("train", status="interrupted")  # stopped after epoch 2 of the 5 it was started for
    evaluated = []
    monkeypatch.setattr(chain, "run_chain", lambda config, run, **kwargs: evaluated.append(kwargs))
    chain.evaluate_existing(run.path)
    out = capsys.readouterr().out
    assert "training of this run did not finish (interrupted after epoch 2 of 5)" in out
    assert f"aae-pipeline run --resume {run.path}" in out and evaluated
