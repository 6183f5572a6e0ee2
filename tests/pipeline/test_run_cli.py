"""`aae-pipeline run` end to end through the real CLI: user mistakes, and runs on the shared Ray cluster: Ray Train's
controller failing (and one worker, restarted, against the plain loop), divergence."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.loop import WorkerContext, train_loop
from pipeline.rundir import RunDir
from tests.helpers import RayCluster, epochs_logged, manifest, run_cli, sets


def run_semisup(cluster: RayCluster, dataset: dict[str, str], run_dir: Path, *args: str,
                overrides: tuple[str, ...] = (), fault: str | None = None) -> subprocess.CompletedProcess:
    """`aae-pipeline run semisup ARGS` on `cluster` into run_dir, on the tiny data set (100 labels)."""
    return cluster.cli("run", "semisup", *args, "--address", cluster.address, "--run-dir", str(run_dir),
                       *sets(dataset, "tracking.wandb=disabled", *overrides), cwd=run_dir.parent, fault=fault)


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
@pytest.mark.slow
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
def test_a_failed_ray_train_controller_is_restarted_and_one_worker_trains_exactly_like_the_plain_loop(
        ray_cluster, synthetic_dataset, tmp_path) -> None:
    run_dir = tmp_path / "run"
    result = run_semisup(ray_cluster, synthetic_dataset, run_dir, "--workers", "1", "--epochs", "3",
                         fault="controller:1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run_dir / "fault-injected.txt").exists()
    assert epochs_logged(run_dir) == [1, 2, 3]  # epoch 1 was kept, not trained again
    assert "training continues from the last checkpoint (restart 1 of at most 2)" in result.stdout
    assert "injected controller fault" in (run_dir / "logs" / "train-controller-failure-1.log").read_text()
    # One Ray worker, restarted from its checkpoint midway, gives the numbers of the plain loop in this process.
    plain = RunDir(tmp_path / "plain")
    plain.path.mkdir()
    train_loop(load_config(str(run_dir / "config.yaml")), plain, WorkerContext())
    for via_ray, direct in zip(RunDir(run_dir).read_metrics(), plain.read_metrics(), strict=True):
        for key in ("train/recon_loss", "train/supervised_loss", "val/error"):
            assert via_ray[key] == pytest.approx(direct[key], rel=1e-4), (via_ray["epoch"], key)


@pytest.mark.slow
def test_a_controller_failure_with_no_restarts_left_fails_the_run_naming_its_cause_and_keeping_its_log(
        ray_cluster, synthetic_dataset, tmp_path) -> None:
    run_dir = tmp_path / "run"
    result = run_semisup(ray_cluster, synthetic_dataset, run_dir, "--epochs", "2",
                         overrides=("run.max_failures=0",), fault="controller:1")
    assert result.returncode == 1
    # Ray's ControllerError puts the cause on its second line: the one line names it, not just "failed:".
    assert "Ray Train's controller failed: RuntimeError: injected controller fault" in result.stderr
    assert "train-error.log" in result.stderr and "Traceback" not in result.stderr
    # What the controller logged (Ray writes it under the session directory, which a user seldom finds).
    log = (run_dir / "logs" / "train-error.log").read_text()
    assert "Errors in the controller's log:" in log and "Traceback" in log and "after_report" in log
    # No restart. (How many epochs the worker finished before the controller's error stopped it is a race.)
    assert "training continues" not in result.stdout
    assert manifest(run_dir)["stages"]["train"]["status"] == "failed"


@pytest.mark.slow
def test_divergence_before_any_checkpoint_is_one_clear_error(ray_cluster, synthetic_dataset, tmp_path) -> None:
    run_dir = tmp_path / "run"
    result = run_semisup(ray_cluster, synthetic_dataset, run_dir, "--epochs", "2",
                         overrides=("train.lr.reconstruction=1e12",))
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout
    [line] = result.stderr.strip().splitlines()
    assert "diverged (NaN/inf losses) in epoch 1" in line
    assert "--set train.lr.supervised=0.01 (few labels)" in line  # semisup with 100 labels: the likely cause
    stages = manifest(run_dir)["stages"]
    assert stages["prepare"]["status"] == "done" and stages["train"]["status"] == "failed"
    assert "evaluate" not in stages
