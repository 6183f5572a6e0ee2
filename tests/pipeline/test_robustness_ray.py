"""Real use that broke runs before: runs started together, another Ray on the machine (live, dead or
token-authenticated), sweeps on an existing cluster, Ctrl-C, a killed driver, too many workers, a worker's
error. Ray cases run the real CLI in subprocesses: those that must start or break a Ray of their own keep it
in a private temp dir, the others join the shared cluster."""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.errors import UserError
from pipeline.ray import cluster
from pipeline.ray.nodes import worker_records
from pipeline.rundir import RunDir, driving
from tests.helpers import (
    cli_command,
    cli_env,
    epochs_logged,
    free_port,
    held_by_another_process,
    listening_addresses,
    manifest,
    on_loopback,
    run_cli,
    sets,
    start_run,
    wait_for,
    wait_for_epochs,
    wait_until_gone,
)


@pytest.fixture
def ray_tmp() -> Iterator[Path]:
    """A short private RAY_TMPDIR (Ray's socket paths must stay under ~100 characters)."""
    path = Path(tempfile.mkdtemp(prefix="aae-ray-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def stage_error_logs(runs: Path, limit: int = 6000) -> str:
    """The stages' error logs under `runs`, for a failure message (the tmp dirs they name are gone after CI)."""
    return "".join(f"\n--- {log}\n{log.read_text()[-limit:]}" for log in sorted(runs.glob("*/logs/*-error.log")))


# --- run directories --------------------------------------------------------------------------------------


def test_runs_claiming_the_same_new_name_get_two_directories(tmp_path) -> None:
    name = tmp_path / "runs" / "semisup-20260101-000000"
    first, second = RunDir(name, fresh=True), RunDir(name, fresh=True)
    with driving(first) as one, driving(second) as two:
        assert one.path != two.path
        assert {one.path.name, two.path.name} == {name.name, f"{name.name}-2"}


def test_a_run_directory_driven_by_another_process_is_refused(tmp_path) -> None:
    run = RunDir(tmp_path / "run")
    with held_by_another_process(run.path) as holder, \
            pytest.raises(UserError, match=f"in use by another aae-pipeline process \\(pid {holder.pid}"), \
            driving(run):
        pass
    with driving(run):  # the kernel released the dead holder's lock
        pass


def test_a_stage_left_running_by_a_dead_process_is_marked_interrupted(tmp_path) -> None:
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.record_stage("prepare", status="done")
    run.record_stage("train", status="running")  # as a SIGKILLed driver leaves it
    with driving(run):
        stages = run.read_manifest()["stages"]
    assert stages["train"]["status"] == "interrupted" and stages["prepare"]["status"] == "done"


@pytest.mark.slow
def test_two_runs_started_at_once_beside_a_running_head_each_start_a_private_ray_and_finish_in_their_own_directories(
        ray_cluster, synthetic_dataset, tmp_path) -> None:
    # Beside the shared head, as on a machine that runs a cluster: a plain run must not join it.
    before = ray_cluster.sessions()
    commands = [
        cli_command("run", "semisup", "--epochs", "1", "--seed", str(seed),
                    *sets(synthetic_dataset, "tracking.wandb=disabled"))
        for seed in (1, 2)
    ]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=cli_env(ray_cluster.env), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for cmd in commands]
    outputs = [proc.communicate(timeout=600) for proc in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-3000:] + stage_error_logs(tmp_path / "runs")
    assert len(ray_cluster.sessions()) == len(before) + 2  # each started its own; neither ran on the head
    run_dirs = sorted((tmp_path / "runs").iterdir())
    assert len(run_dirs) == 2
    seeds = sorted(manifest(run_dir)["config"]["train"]["seed"] for run_dir in run_dirs)
    assert seeds == [1, 2]
    for run_dir in run_dirs:
        assert epochs_logged(run_dir) == [1]
        assert manifest(run_dir)["stages"]["track"]["status"] == "done"


# --- other Ray instances on the machine -----------------------------------------------------------------


@pytest.mark.slow
def test_run_address_joins_a_token_authenticated_head(ray_cluster, synthetic_dataset, tmp_path) -> None:
    assert "Token authentication is enabled" in (ray_cluster.root / "node_head.log").read_text()
    before = ray_cluster.sessions()
    joined = ray_cluster.cli("run", "semisup", "--epochs", "1", "--workers", "2", "--address", ray_cluster.address,
                             "--run-dir", "joined", *sets(synthetic_dataset, "tracking.wandb=disabled"), cwd=tmp_path)
    assert joined.returncode == 0, joined.stderr[-3000:]
    assert ray_cluster.sessions() == before  # it ran on the head: no Ray of its own was started


@pytest.mark.slow
def test_run_address_with_the_wrong_token_says_authentication_failed(ray_cluster, tmp_path) -> None:
    result = ray_cluster.cli("run", "semisup", "--address", ray_cluster.address, cwd=tmp_path,
                             RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "refused this client's authentication token" in line and "RAY_AUTH_TOKEN" in line
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_a_sweep_on_a_four_cpu_head_runs_two_worker_trials_side_by_side_and_gives_the_cpus_back(
        ray_cluster, synthetic_dataset, tmp_path) -> None:
    (tmp_path / "space.yaml").write_text("model.params.z_dim: {grid: [2, 3]}\n")
    result = ray_cluster.cli(
        "tune", "semisup", "--search", "grid", "--scheduler", "fifo", "--space", "space.yaml",
        "--workers-per-trial", "2", "--address", ray_cluster.address, "--epochs", "1", "--sweep-dir", "sweep",
        *sets(synthetic_dataset, "tracking.wandb=disabled"), cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "up to 2 at once" in result.stdout  # the head's 4 CPUs hold two 2-worker trials
    sweep = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert sweep["status"] == "done" and (tmp_path / "sweep" / "best.yaml").exists()
    # Each trial drives its own TorchTrainer; none waited on resources another left behind.
    trials = list((tmp_path / "sweep" / "trials").iterdir())
    assert len(trials) == 2 and all(epochs_logged(trial) == [1] for trial in trials)
    # Every trial's workers gave their CPUs back: nothing is left holding the head.
    wait_for(lambda: ray_cluster.free_cpus() == 4.0, 60, "the head's 4 CPUs to be free")


# --- refusing what cannot fit -----------------------------------------------------------------------------


@pytest.mark.slow
def test_far_more_workers_than_cores_is_refused_before_anything_starts(tmp_path) -> None:
    result = run_cli("run", "semisup", "--workers", "64", cwd=tmp_path)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "64 workers" in line and "cores" in line and "--workers" in line
    assert not (tmp_path / "runs").exists()


def test_workers_that_would_not_fit_in_memory_are_refused(monkeypatch) -> None:
    monkeypatch.setattr(cluster, "_available_memory", lambda: 2 * cluster.WORKER_MEMORY_BYTES)
    with pytest.raises(UserError, match="3 workers need about .* GiB of memory") as refused:
        cluster.check_local_fit(cluster.WorkerResources(3, 1.0, 0.0, 1))
    assert "--workers 2" in str(refused.value)
    cluster.check_local_fit(cluster.WorkerResources(2, 1.0, 0.0, 1))


def test_a_local_ray_that_cannot_start_for_lack_of_room_is_one_line(monkeypatch) -> None:
    import ray

    def no_room(**kwargs):
        raise RuntimeError("The node with node id: abc has not been started within the timeout")

    monkeypatch.setattr(ray, "init", no_room)
    monkeypatch.setattr(cluster.resource, "getrlimit", lambda which: (30000 * 1024, cluster.resource.RLIM_INFINITY))
    with pytest.raises(UserError) as refused:
        cluster.connect(None, cluster.WorkerResources(1, 1.0, 0.0, 1))
    assert refused.value.message == "Ray could not start on this machine: files are limited to 29 MB by `ulimit -f`"
    assert "free disk space" in refused.value.fix and "RAY_TMPDIR" in refused.value.fix
    monkeypatch.setattr(cluster.resource, "getrlimit", lambda which: (cluster.resource.RLIM_INFINITY,) * 2)
    monkeypatch.setattr(cluster.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10 << 30, 10 << 30, 0))
    with pytest.raises(UserError, match=r"only 0 MB free in /dev/shm"):
        cluster.connect(None, cluster.WorkerResources(1, 1.0, 0.0, 1))


def test_a_stage_that_ran_out_of_disk_space_says_to_free_some() -> None:
    from pipeline.errors import StageError
    from pipeline.ray.trainer import WorkerFailed

    full = OSError(errno.ENOSPC, "No space left on device")
    for cause in (full, WorkerFailed(full)):  # in the driver, or in a training worker
        assert "free disk space (or lift `ulimit -f`), then re-run the same command" in str(
            StageError("train", cause, "logs/train-error.log"))
    other = str(StageError("train", RuntimeError("boom"), "logs/train-error.log"))
    assert other.endswith("finished stages are kept, re-run the same command to continue")


# --- interrupts, dead drivers, failing workers -----------------------------------------------------------


@pytest.mark.slow
def test_ctrl_c_says_what_was_kept_and_how_to_continue(ray_cluster, synthetic_dataset, tmp_path, ray_tmp) -> None:
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp)}
    run_dir = tmp_path / "run"
    process = start_run(run_dir, synthetic_dataset, "semisup", "--epochs", "30", "--workers", "4", env=env)
    wait_for_epochs(run_dir, process)
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends: the whole foreground group
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    assert "interrupted during train" in err and f"aae-pipeline run --resume {run_dir}" in err
    assert manifest(run_dir)["stages"]["train"]["status"] == "interrupted"
    kept = epochs_logged(run_dir)
    # The command it printed continues the four workers' run (here on the shared cluster, to spare a Ray start).
    resumed = ray_cluster.cli("run", "--resume", str(run_dir), "--epochs", str(kept[-1] + 1), "--address",
                              ray_cluster.address, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert epochs_logged(run_dir) == [*kept, kept[-1] + 1]
    assert f"epoch {kept[-1]:3d}/" not in resumed.stdout  # nothing redone
    assert (run_dir / "checkpoints" / f"epoch-{kept[-1] + 1:04d}.pt").exists()
    assert manifest(run_dir)["stages"]["train"]["status"] == "done"


@pytest.mark.slow
def test_a_run_beside_a_stale_cluster_record_listens_on_loopback_only_and_sigterm_stops_it_like_ctrl_c(
        synthetic_dataset, tmp_path, ray_tmp) -> None:
    # What a `ray start` that was killed instead of stopped leaves behind: the address of a dead head.
    (ray_tmp / "ray").mkdir()
    (ray_tmp / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}")
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp)}
    run_dir = tmp_path / "run"
    process = start_run(run_dir, synthetic_dataset, "semisup", "--epochs", "30", "--workers", "2", env=env)
    wait_for_epochs(run_dir, process)  # the stale record did not stop the run from starting its own Ray
    listening = listening_addresses(process.pid)
    # the driver, the GCS, the raylet, both training workers and their rendezvous, on a laptop's every network
    assert len(listening) >= 5 and all(on_loopback(address) for address in listening), listening
    process.send_signal(signal.SIGTERM)  # what `timeout`, Slurm, Kubernetes and `docker stop` send
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err[-3000:]
    assert "Traceback" not in err
    assert "interrupted (SIGTERM) during train" in err and f"aae-pipeline run --resume {run_dir}" in err
    assert manifest(run_dir)["stages"]["train"]["status"] == "interrupted"
    assert epochs_logged(run_dir)  # its checkpoints are what --resume continues from (tested with Ctrl-C)


@pytest.mark.slow
def test_a_killed_driver_is_recognised_and_its_run_continues(ray_cluster, synthetic_dataset, tmp_path,
                                                               ray_tmp) -> None:
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp)}
    run_dir = tmp_path / "run"
    process = start_run(run_dir, synthetic_dataset, "semisup", "--epochs", "30", env=env)
    wait_for_epochs(run_dir, process)
    busy = run_cli("run", "--resume", str(run_dir), cwd=tmp_path, env={"RAY_TMPDIR": str(ray_tmp)})
    assert busy.returncode == 2 and "in use by another aae-pipeline process" in busy.stderr
    process.kill()  # SIGKILL: no handler runs, the manifest still says "running"
    process.communicate(timeout=60)
    os.killpg(process.pid, signal.SIGKILL)  # and the private Ray it had started
    wait_until_gone(worker_records(RunDir(run_dir))[0]["pid"])  # Ray's worker, in a group of its own, follows
    assert manifest(run_dir)["stages"]["train"]["status"] == "running"
    kept = epochs_logged(run_dir)
    resumed = ray_cluster.cli("run", "--resume", str(run_dir), "--epochs", str(kept[-1] + 1), "--address",
                              ray_cluster.address, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "an earlier run in this directory stopped during train" in resumed.stdout
    assert epochs_logged(run_dir) == [*kept, kept[-1] + 1]


@pytest.mark.slow
def test_a_workers_user_error_reaches_the_terminal_as_one_line(ray_cluster, synthetic_dataset, tmp_path) -> None:
    data_dir = tmp_path / "data"
    shutil.copytree(synthetic_dataset["data.data_dir"], data_dir)
    dataset = {**synthetic_dataset, "data.data_dir": str(data_dir)}
    run_dir = tmp_path / "run"
    args = ["run", "semisup", "--epochs", "1", "--run-dir", str(run_dir), "--address", ray_cluster.address,
            *sets(dataset, "tracking.wandb=disabled", "run.max_failures=0")]
    assert ray_cluster.cli(*args, cwd=tmp_path).returncode == 0
    [train_file] = data_dir.glob("idx-*/train.parquet")
    train_file.write_bytes(train_file.read_bytes()[:-100])  # damaged after the prepare stage checked it
    result = ray_cluster.cli(*args, "--from", "train", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    [line] = result.stderr.strip().splitlines()
    assert "train.parquet" in line and "rebuild it with" in line
