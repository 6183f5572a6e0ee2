"""`aae-pipeline run` end to end through the real CLI: Ray Train workers, failure recovery, resume, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.loop import WorkerContext, train_loop
from pipeline.rundir import RunDir
from tests.conftest import tiny_overrides

REPO = Path(__file__).resolve().parents[2]


def cli_command(*args: str, fault: str | None = None) -> list[str]:
    """The command line of `aae-pipeline ARGS`; with fault="EPOCH:STEP:RANK", one training worker is killed
    there once, with fault="controller:EPOCH" Ray Train's controller fails once after that epoch (tests/faults.py)."""
    return [sys.executable, "-m", "pipeline.cli", *args] if fault is None else \
        [sys.executable, "-m", "tests.faults", fault, *args]


def cli_env(env: dict[str, str]) -> dict[str, str]:
    """`env` plus this checkout on PYTHONPATH, so that `-m tests.faults` resolves from any working directory."""
    paths = [str(REPO), *filter(None, [env.get("PYTHONPATH")])]
    return {**env, "PYTHONPATH": os.pathsep.join(paths)}


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None, fault: str | None = None
            ) -> subprocess.CompletedProcess:
    """Run `aae-pipeline ARGS` in a fresh interpreter, as a user would."""
    return subprocess.run(
        cli_command(*args, fault=fault),
        cwd=cwd,
        env=cli_env({**os.environ, **(env or {})}),
        capture_output=True,
        text=True,
        timeout=600,
    )


def sets(dataset: dict[str, str], *extra: str) -> list[str]:
    return [arg for override in tiny_overrides(dataset, "data.labels=100", *extra) for arg in ("--set", override)]


def run_semisup(dataset: dict[str, str], run_dir: Path, *args: str, overrides: tuple[str, ...] = (),
                env: dict[str, str] | None = None, fault: str | None = None) -> subprocess.CompletedProcess:
    """`aae-pipeline run semisup ARGS` into run_dir on the tiny data set (100 labels), from run_dir's folder."""
    return run_cli("run", "semisup", *args, "--run-dir", str(run_dir), *sets(dataset, *overrides), cwd=run_dir.parent,
                   env=env, fault=fault)


def epochs_logged(run_dir: Path) -> list[int]:
    return [row["epoch"] for row in RunDir(run_dir).read_metrics()]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "semisupervised"], "unknown experiment"),
        (["run", "semisup", "--set", "train.bogus=1"], "unknown config key 'train.bogus'"),
        (["run", "semisup", "--workers", "0"], "run.workers"),
        (["run", "semisup", "--set", "data.labels=70000"], "data.labels"),
        (["run", "semisup", "--address", "127.0.0.1:1"], "cannot reach the Ray cluster"),
        (["run", "--resume", "not-a-run"], "not a run directory"),
        (["data", "prepare", "idx:/nonexistent/dir"], "/nonexistent/dir"),
        (["run", "semisup", "--run-dir", os.fsdecode(b"/tmp/bad\xff")], "'/tmp/bad\\xff' is not UTF-8 text"),
        (["run", "semisup", "--set", os.fsdecode(b"data.dataset=idx:/d\xe9")], "is not UTF-8 text (byte 0xe9)"),
    ],
)
def test_user_mistakes_are_one_line_exit_2_and_leave_nothing(args: list[str], expected: str, tmp_path) -> None:
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_malformed_experiment_yaml_is_reported_with_its_line(tmp_path) -> None:
    bad = tmp_path / "mine.yaml"
    bad.write_text("model:\n  variant: [unclosed\n")
    result = run_cli("run", str(bad), cwd=tmp_path)
    assert result.returncode == 2
    assert "malformed YAML" in result.stderr and "line" in result.stderr


@pytest.mark.slow
def test_killed_worker_restarts_from_checkpoint_and_finishes(synthetic_dataset, tmp_path) -> None:
    run_dir = tmp_path / "run"
    # SIGKILL rank 1 at step 2 of the second epoch; Ray restarts the group from the epoch-1 checkpoint.
    result = run_semisup(synthetic_dataset, run_dir, "--workers", "2", "--epochs", "3", fault="1:2:1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run_dir / "fault-injected.txt").exists()
    assert epochs_logged(run_dir) == [1, 2, 3]  # epoch 1 was not redone, epoch 2 was logged once
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stages"]["train"]["status"] == "done"
    assert manifest["metrics"]["epoch"] == 3
    assert "val/error" in manifest["metrics"] and "train/recon_loss" in manifest["metrics"]
    assert "epoch   3/3" in result.stdout
    assert "\x1b[" not in result.stdout + result.stderr  # Ray's "(raylet) A worker died…" notice, uncoloured
    log = (run_dir / "run.log").read_text()
    assert "epoch   3/3" in log and "\x1b[" not in log  # the run's log holds what was printed, uncoloured


@pytest.mark.slow
def test_a_failed_ray_train_controller_is_restarted_from_the_checkpoint(synthetic_dataset, tmp_path) -> None:
    run_dir = tmp_path / "run"
    result = run_semisup(synthetic_dataset, run_dir, "--epochs", "3", fault="controller:1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run_dir / "fault-injected.txt").exists()
    assert epochs_logged(run_dir) == [1, 2, 3]  # epoch 1 was kept, not trained again
    assert "training continues from the last checkpoint (restart 1 of at most 2)" in result.stdout
    assert "injected controller fault" in (run_dir / "logs" / "train-controller-failure-1.log").read_text()


@pytest.mark.slow
def test_a_controller_failure_with_no_restarts_left_fails_the_run_naming_its_cause(synthetic_dataset,
                                                                                  tmp_path) -> None:
    run_dir = tmp_path / "run"
    result = run_semisup(synthetic_dataset, run_dir, "--epochs", "2", overrides=("run.max_failures=0",),
                         fault="controller:1")
    assert result.returncode == 1
    assert "Ray Train's controller failed: RuntimeError: injected controller fault" in result.stderr
    assert "train-error.log" in result.stderr and "Traceback" not in result.stderr
    # No restart. (How many epochs the worker finished before the controller's error stopped it is a race.)
    assert "training continues" not in result.stdout
    assert json.loads((run_dir / "manifest.json").read_text())["stages"]["train"]["status"] == "failed"


@pytest.mark.slow
def test_resume_flag_continues_a_four_worker_run(synthetic_dataset, tmp_path) -> None:
    run_dir = tmp_path / "run"
    first = run_semisup(synthetic_dataset, run_dir, "--workers", "4", "--epochs", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = run_cli("run", "--resume", str(run_dir), "--epochs", "2", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert epochs_logged(run_dir) == [1, 2]
    assert (run_dir / "checkpoints" / "epoch-0002.pt").exists()
    assert "epoch   1/" not in resumed.stdout  # nothing redone


@pytest.mark.slow
def test_one_ray_worker_trains_exactly_like_the_plain_loop(synthetic_dataset, tmp_path) -> None:
    ray_dir = tmp_path / "ray-run"
    result = run_semisup(synthetic_dataset, ray_dir, "--workers", "1", "--epochs", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    config = load_config(str(ray_dir / "config.yaml"))
    plain = RunDir(tmp_path / "plain")
    plain.path.mkdir()
    train_loop(config, plain, WorkerContext())
    for via_ray, direct in zip(RunDir(ray_dir).read_metrics(), plain.read_metrics(), strict=True):
        for key in ("train/recon_loss", "train/supervised_loss", "val/error"):
            assert via_ray[key] == pytest.approx(direct[key], rel=1e-4)


@pytest.mark.slow
def test_divergence_before_any_checkpoint_is_one_clear_error(synthetic_dataset, tmp_path) -> None:
    run_dir = tmp_path / "run"
    result = run_semisup(synthetic_dataset, run_dir, "--epochs", "2", overrides=("train.lr.reconstruction=1e12",))
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout
    [line] = result.stderr.strip().splitlines()
    assert "diverged (NaN/inf losses) in epoch 1" in line
    assert "--set train.lr.supervised=0.01 (few labels)" in line  # semisup with 100 labels: the likely cause
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stages"]["prepare"]["status"] == "done"
    assert manifest["stages"]["train"]["status"] == "failed"
    assert "evaluate" not in manifest["stages"]
