"""`aae-pipeline tune` end to end through the real CLI: mistakes, a grid sweep with ASHA and its results (its trials
trained two to a process), and a stopped sweep. Sweeps run on the shared cluster; a resumed sweep is tested on the
multi-node one."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.config import load_config
from pipeline.loop import WorkerContext, train_loop
from pipeline.rundir import RunDir
from tests.conftest import tiny_overrides
from tests.helpers import held_by_another_process, run_cli

EPOCHS = 3
# The first learning rate trains, the second barely moves: ASHA should stop the second's trials after epoch 1.
# Tune starts the two that learn first (z_dim varies fastest), so the others reach epoch 1 after their results.
GRID = "train.lr.reconstruction: {grid: [0.01, 1.0e-7]}\nmodel.params.z_dim: {grid: [2, 4]}\n"


def sweep_sets(dataset: dict[str, str], *extra: str) -> list[str]:
    """--set arguments for a sweep on 600 examples of the tiny data set with small nets."""
    overrides = tiny_overrides(dataset, "data.limit=600", "tracking.wandb=disabled", *extra)
    return [arg for override in overrides for arg in ("--set", override)]


def trial_epochs(sweep: Path) -> dict[str, list[int]]:
    trials = (sweep / "trials").iterdir()
    return {trial.name: [row["epoch"] for row in RunDir(trial).read_metrics()] for trial in trials}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--search", "optuna"], "write {choice: [...]} instead of {grid: [...]}"),
        (["--set", "model.params.z_dim=3"], "both searched and --set"),
        (["--scheduler", "hyperband"], "unknown scheduler"),
        (["--gpus-per-trial", "-1"], "--gpus-per-trial must be 0 or more"),
        (["--trials-per-process", "2", "--workers-per-trial", "2"], "pass --workers-per-trial 1 with it"),
    ],
)
@pytest.mark.slow
def test_tune_mistakes_are_one_line_exit_2_and_leave_nothing(args: list[str], expected: str, tmp_path) -> None:
    (tmp_path / "grid.yaml").write_text(GRID)
    result = run_cli("tune", "unsup-gaussian", "--space", "grid.yaml", *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "sweeps").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks a machine without GPUs")
@pytest.mark.slow
def test_gpu_trials_on_a_machine_without_gpus_are_refused_before_anything_is_written(tmp_path) -> None:
    (tmp_path / "grid.yaml").write_text(GRID)
    result = run_cli("tune", "unsup-gaussian", "--space", "grid.yaml", "--gpus-per-trial", "0.25", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "0.25 GPU but the Ray cluster has 0 GPUs" in result.stderr and "--gpus-per-worker 0" in result.stderr
    assert not (tmp_path / "sweeps").exists()


@pytest.mark.slow
def test_a_sweep_directory_another_process_holds_is_refused_for_a_new_sweep_and_a_resume(tmp_path) -> None:
    sweep = tmp_path / "sweep"
    (tmp_path / "grid.yaml").write_text(GRID)
    with held_by_another_process(sweep) as holder:
        for args in (["tune", "unsup-gaussian", "--space", "grid.yaml", "--sweep-dir", str(sweep)],
                     ["tune", "--resume", str(sweep)]):
            result = run_cli(*args, cwd=tmp_path)
            (sweep / "sweep.json").write_text("{}")  # as the holder's sweep writes it once under way
            assert result.returncode == 2, result.stderr
            [line] = result.stderr.strip().splitlines()
            assert f"{sweep} is in use by another aae-pipeline process (pid {holder.pid}" in line
    assert sorted(path.name for path in sweep.iterdir()) == [".driver.lock", "sweep.json"]  # nothing else written
    assert (sweep / "sweep.json").read_text() == "{}"


@pytest.mark.slow
def test_resume_of_a_directory_that_is_no_sweep_is_a_user_error(tmp_path) -> None:
    result = run_cli("tune", "--resume", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2 and "not a sweep directory" in result.stderr


@pytest.fixture(scope="module")
def grid_sweep(ray_cluster, synthetic_dataset, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One 2x2 grid sweep with ASHA (grace period 1), two trials at a time trained in one process, shared by the
    tests below."""
    root = tmp_path_factory.mktemp("sweep")
    (root / "grid.yaml").write_text(GRID)
    result = ray_cluster.cli(
        "tune", "unsup-gaussian", "--space", "grid.yaml", "--search", "grid", "--scheduler", "asha",
        "--epochs", str(EPOCHS), "--max-concurrent", "2", "--trials-per-process", "2", "--sweep-dir", "sweep",
        "--address", ray_cluster.address, *sweep_sets(synthetic_dataset), cwd=root,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "sweep", result


@pytest.mark.slow
def test_grid_sweep_prints_the_table_and_writes_its_results(grid_sweep) -> None:
    sweep, result = grid_sweep
    rows = pq.read_table(sweep / "trials.parquet").to_pylist()
    assert len(rows) == 4
    assert {(row["train.lr.reconstruction"], row["model.params.z_dim"]) for row in rows} == {
        (0.01, 2), (0.01, 4), (1e-7, 2), (1e-7, 4)
    }
    manifest = json.loads((sweep / "sweep.json").read_text())
    assert manifest["status"] == "done" and manifest["metric"] == "val/recon_bce" and manifest["mode"] == "min"
    best = min((row for row in rows if row["status"] == "completed"), key=lambda row: row["final"])
    assert manifest["best"]["trial_id"] == best["trial_id"]
    assert "up to 2 at once, 1 worker(s) each, 2 trials per process" in result.stdout
    assert "unsup-gaussian sweep: val/recon_bce" in result.stdout
    assert f"* {best['trial_id']}" in result.stdout  # the best row is marked in the printed table
    assert f"aae-pipeline run {sweep / 'best.yaml'}" in result.stdout
    assert result.stdout.count(" finished: ") + result.stdout.count(" stopped early ") == 4
    best_config = load_config(str(sweep / "best.yaml"))  # what `aae-pipeline run best.yaml` loads
    assert best_config.train.lr.reconstruction == best["train.lr.reconstruction"] == 0.01
    assert best_config.model.params["z_dim"] == best["model.params.z_dim"]
    assert best_config.data.limit == 600 and best_config.train.epochs == EPOCHS


@pytest.mark.slow
def test_asha_stops_trials_that_do_not_learn_after_the_grace_epoch(grid_sweep) -> None:
    sweep, _ = grid_sweep
    rows = {row["trial_id"]: row for row in pq.read_table(sweep / "trials.parquet").to_pylist()}
    first_pair = sorted(rows)[:2]  # started together: one process trains both
    records = [sweep / "trials" / trial / "ray/workers/rank-0.json" for trial in first_pair]
    pids = {json.loads(record.read_text())["pid"] for record in records}
    assert len(pids) == 1
    hopeless = [row for row in rows.values() if row["train.lr.reconstruction"] == 1e-7]
    assert all(row["status"] == "stopped" and row["epochs"] == 1 for row in hopeless), hopeless
    assert any(row["status"] == "completed" and row["epochs"] == EPOCHS for row in rows.values())
    assert {trial: epochs[-1] for trial, epochs in trial_epochs(sweep).items()} == {
        trial: row["epochs"] for trial, row in rows.items()
    }


@pytest.mark.slow
def test_best_config_trained_again_reproduces_the_best_trial_s_curve(grid_sweep, tmp_path) -> None:
    sweep, _ = grid_sweep
    manifest = json.loads((sweep / "sweep.json").read_text())
    again = RunDir(tmp_path / "again")
    again.path.mkdir()
    final = train_loop(load_config(str(sweep / "best.yaml")), again, WorkerContext())  # `run` with one worker
    assert final["epoch"] == EPOCHS
    assert final["val/recon_bce"] == pytest.approx(manifest["best"]["final"], rel=1e-6)
    trained_in_pack = RunDir(sweep / "trials" / manifest["best"]["trial_id"]).read_metrics()
    for ours, theirs in zip(again.read_metrics(), trained_in_pack, strict=True):
        assert {k: pytest.approx(v, rel=1e-6) for k, v in ours.items() if not k.startswith("time/")} == {
            k: v for k, v in theirs.items() if not k.startswith("time/")}


@pytest.mark.slow
def test_sigterm_stops_a_sweep_as_interrupted(ray_cluster, synthetic_dataset, tmp_path) -> None:
    (tmp_path / "grid.yaml").write_text("model.params.z_dim: {grid: [2, 3, 4, 5, 6]}\n")
    command = [
        sys.executable, "-m", "pipeline.cli", "tune", "unsup-gaussian", "--space", "grid.yaml", "--search", "grid",
        "--scheduler", "fifo", "--epochs", "2", "--max-concurrent", "1", "--sweep-dir", "sweep", "--address",
        ray_cluster.address, *sweep_sets(synthetic_dataset),
    ]
    with subprocess.Popen(
        command, cwd=tmp_path, env={**ray_cluster.env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    ) as process:
        rest = _interrupt_after_first_finished_trial(process)
        assert process.wait(timeout=300) == 143, rest  # SIGTERM's code; Tune stopped as on Ctrl-C
    assert "Traceback" not in rest
    assert json.loads((tmp_path / "sweep" / "sweep.json").read_text())["status"] == "interrupted"
    assert f"aae-pipeline tune --resume {tmp_path / 'sweep'}" in rest


def _interrupt_after_first_finished_trial(process: subprocess.Popen) -> str:
    """Read the sweep's output until a trial finishes, then stop it as a scheduler (`timeout`, Slurm, `docker stop`)
    does, with SIGTERM; returns the output that follows."""
    seen = []
    for line in process.stdout:
        seen.append(line)
        if " finished: " in line:
            process.send_signal(signal.SIGTERM)
            return process.stdout.read()
    pytest.fail("the sweep ended before a trial finished:\n" + "".join(seen[-30:]))
