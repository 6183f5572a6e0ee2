"""Real use that broke runs before: runs started together, another Ray on the machine (live, dead or
token-authenticated), sweeps on an existing cluster, Ctrl-C, a killed driver, too many workers, a worker's
error. Ray cases run the real CLI in subprocesses; every Ray they start lives in a private temp dir."""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.errors import UserError
from pipeline.ray import cluster
from pipeline.ray.nodes import worker_records
from pipeline.rundir import RunDir, driving
from tests.conftest import tiny_overrides
from tests.helpers import held_by_another_process, listening_addresses, on_loopback
from tests.pipeline.test_run_cli import epochs_logged, run_cli, sets

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def ray_tmp() -> Iterator[Path]:
    """A short private RAY_TMPDIR (Ray's socket paths must stay under ~100 characters)."""
    path = Path(tempfile.mkdtemp(prefix="aae-ray-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def stage_error_logs(runs: Path, limit: int = 6000) -> str:
    """The stages' error logs under `runs`, for a failure message (the tmp dirs they name are gone after CI)."""
    return "".join(f"\n--- {log}\n{log.read_text()[-limit:]}" for log in sorted(runs.glob("*/logs/*-error.log")))


def sessions(ray_tmp: Path) -> list[str]:
    return sorted(path.name for path in (ray_tmp / "ray").glob("session_2*"))


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
def test_two_runs_started_at_once_both_finish_in_their_own_directories(synthetic_dataset, tmp_path, ray_tmp) -> None:
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp)}
    commands = [
        [sys.executable, "-m", "pipeline.cli", "run", "semisup", "--epochs", "1", "--seed", str(seed),
         *sets(synthetic_dataset, "tracking.wandb=disabled")]
        for seed in (1, 2)
    ]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for cmd in commands]
    outputs = [proc.communicate(timeout=600) for proc in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-3000:] + stage_error_logs(tmp_path / "runs")
    run_dirs = sorted((tmp_path / "runs").iterdir())
    assert len(run_dirs) == 2
    seeds = sorted(manifest(run_dir)["config"]["train"]["seed"] for run_dir in run_dirs)
    assert seeds == [1, 2]
    for run_dir in run_dirs:
        assert epochs_logged(run_dir) == [1]
        assert manifest(run_dir)["stages"]["track"]["status"] == "done"


# --- other Ray instances on the machine -----------------------------------------------------------------


@pytest.mark.slow
def test_a_stale_ray_cluster_record_does_not_break_a_run(synthetic_dataset, tmp_path, ray_tmp) -> None:
    # What a `ray start` that was killed instead of stopped leaves behind: the address of a dead head.
    (ray_tmp / "ray").mkdir()
    (ray_tmp / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}")
    result = run_cli("run", "semisup", "--epochs", "1", *sets(synthetic_dataset, "tracking.wandb=disabled"),
                     cwd=tmp_path, env={"RAY_TMPDIR": str(ray_tmp)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def ray_head() -> Iterator[dict[str, str]]:
    """A real 4-CPU head started with `ray start --head` on a free loopback port, with a token on the machine
    (as after any earlier local Ray), so Ray 2.60 turns token authentication on. Its own HOME and RAY_TMPDIR
    keep the user's ~/.ray and /tmp/ray untouched; the whole process group is ended afterwards."""
    root = Path(tempfile.mkdtemp(prefix="aae-head-", dir="/tmp"))
    home = root / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(secrets.token_hex(32))
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    env.update(HOME=str(home), RAY_TMPDIR=str(root))
    port = free_port()
    log = (root / "head.log").open("w")
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--port", str(port), "--num-cpus", "4", "--include-dashboard=false",
         "--disable-usage-stats"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while "Ray runtime started" not in (root / "head.log").read_text():
            assert head.poll() is None and time.monotonic() < deadline, (root / "head.log").read_text()
            time.sleep(0.5)
        assert "Token authentication is enabled" in (root / "head.log").read_text()
        yield {"address": f"127.0.0.1:{port}", "root": str(root), **{f"env:{k}": v for k, v in env.items()}}
    finally:
        _end_group(head)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def _end_group(process: subprocess.Popen) -> None:
    """SIGTERM the head's process group, then SIGKILL whatever of it is left."""
    for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the group outlives the `ray start` process by a moment
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)


def head_env(head: dict[str, str], **extra: str) -> dict[str, str]:
    """The head's environment (HOME with its token, RAY_TMPDIR) for a client process; no RAY_AUTH_MODE."""
    env = {key.removeprefix("env:"): value for key, value in head.items() if key.startswith("env:")}
    return {**env, **extra}


def run_in(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_run_address_joins_a_token_authenticated_head_and_a_plain_run_stays_private(
    ray_head, synthetic_dataset, tmp_path
) -> None:
    env, root = head_env(ray_head), Path(ray_head["root"])
    args = ["semisup", "--epochs", "1", "--workers", "2", *sets(synthetic_dataset, "tracking.wandb=disabled")]
    joined = run_in(env, "run", *args, "--address", ray_head["address"], "--run-dir", "joined", cwd=tmp_path)
    assert joined.returncode == 0, joined.stderr[-3000:]
    assert sessions(root) == sessions(root)[:1]  # it ran on the head: no Ray of its own was started
    private = run_in(env, "run", *args, "--seed", "1", "--run-dir", "private", cwd=tmp_path)
    assert private.returncode == 0, private.stderr[-3000:]
    assert len(sessions(root)) == 2  # beside a running head, a plain run starts its own instance


@pytest.mark.slow
def test_run_address_with_the_wrong_token_says_authentication_failed(ray_head, tmp_path) -> None:
    env = head_env(ray_head, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    result = run_in(env, "run", "semisup", "--address", ray_head["address"], cwd=tmp_path)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "refused this client's authentication token" in line and "RAY_AUTH_TOKEN" in line
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_a_sweep_on_a_four_cpu_head_places_every_two_worker_trial(ray_head, synthetic_dataset, tmp_path) -> None:
    (tmp_path / "space.yaml").write_text("model.params.z_dim: {grid: [2, 3, 4, 5]}\n")
    result = run_in(
        head_env(ray_head), "tune", "semisup", "--search", "grid", "--scheduler", "fifo", "--space", "space.yaml",
        "--workers-per-trial", "2", "--address", ray_head["address"], "--epochs", "1", "--sweep-dir", "sweep",
        *sets(synthetic_dataset, "tracking.wandb=disabled"), cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "up to 2 at once" in result.stdout  # the head's 4 CPUs hold two 2-worker trials
    sweep = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert sweep["status"] == "done"
    for trial in (tmp_path / "sweep" / "trials").iterdir():
        assert epochs_logged(trial) == [1]
    assert len(list((tmp_path / "sweep" / "trials").iterdir())) == 4
    # Every trial's workers gave their CPUs back: nothing is left holding the head.
    check = subprocess.run(
        [sys.executable, "-c", "import ray; from pipeline.ray.cluster import connect, WorkerResources\n"
         f"connect({ray_head['address']!r}, WorkerResources(1, 1.0, 0.0, 1))\n"
         "import time; time.sleep(2); print(ray.available_resources().get('CPU'))"],
        env=head_env(ray_head), capture_output=True, text=True, timeout=120,
    )
    assert check.stdout.strip().splitlines()[-1] == "4.0", check.stderr[-2000:]


# --- refusing what cannot fit -----------------------------------------------------------------------------


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


def start_run(run_dir: Path, dataset: dict[str, str], *args: str, env: dict[str, str]) -> subprocess.Popen:
    """`aae-pipeline run` in its own process group, as a terminal would start it.

    A shell without job control starts background commands with SIGINT ignored, and a child inherits that, so
    pytest launched that way (`.ci/run &` in a script) would start a driver deaf to Ctrl-C. Handled signals are
    reset to their default by exec, so catching SIGINT here while the child starts gives it a terminal's."""
    ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "run", *args, "--run-dir", str(run_dir),
             *sets(dataset, "tracking.wandb=disabled")],
            cwd=run_dir.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True,
        )
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def wait_for_epochs(run_dir: Path, process: subprocess.Popen, count: int = 1, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not (run_dir / "metrics.jsonl").exists() or len(epochs_logged(run_dir)) < count:
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no epoch finished in time"
        time.sleep(0.5)


def wait_until_gone(pid: int, timeout_s: float = 60) -> None:
    """Wait for a process to exit (a Ray worker outlives its killed driver for a second or two)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:  # the state is the field after the parenthesised name; Z: exited, not yet reaped
            if Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z":
                return
        except FileNotFoundError:
            return
        assert time.monotonic() < deadline, f"process {pid} still running"
        time.sleep(0.2)


@pytest.mark.slow
def test_ctrl_c_says_what_was_kept_and_how_to_continue(synthetic_dataset, tmp_path, ray_tmp) -> None:
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp)}
    run_dir = tmp_path / "run"
    process = start_run(run_dir, synthetic_dataset, "semisup", "--epochs", "30", "--workers", "2", env=env)
    wait_for_epochs(run_dir, process)
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends: the whole foreground group
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    assert "interrupted during train" in err and f"aae-pipeline run --resume {run_dir}" in err
    assert manifest(run_dir)["stages"]["train"]["status"] == "interrupted"
    kept = epochs_logged(run_dir)
    resumed = run_cli("run", "--resume", str(run_dir), "--epochs", str(kept[-1] + 1), cwd=tmp_path,
                      env={"RAY_TMPDIR": str(ray_tmp)})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert epochs_logged(run_dir) == [*kept, kept[-1] + 1]
    assert manifest(run_dir)["stages"]["train"]["status"] == "done"


@pytest.mark.slow
def test_sigterm_stops_a_run_like_ctrl_c_and_its_ray_listens_on_loopback_only(synthetic_dataset, tmp_path,
                                                                              ray_tmp) -> None:
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp)}
    run_dir = tmp_path / "run"
    process = start_run(run_dir, synthetic_dataset, "semisup", "--epochs", "30", "--workers", "2", env=env)
    wait_for_epochs(run_dir, process)
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
def test_a_killed_driver_is_recognised_and_its_run_continues(synthetic_dataset, tmp_path, ray_tmp) -> None:
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
    resumed = run_cli("run", "--resume", str(run_dir), "--epochs", str(kept[-1] + 1), cwd=tmp_path,
                      env={"RAY_TMPDIR": str(ray_tmp)})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "an earlier run in this directory stopped during train" in resumed.stdout
    assert epochs_logged(run_dir) == [*kept, kept[-1] + 1]


@pytest.mark.slow
def test_a_workers_user_error_reaches_the_terminal_as_one_line(synthetic_dataset, tmp_path, ray_tmp) -> None:
    data_dir = tmp_path / "data"
    shutil.copytree(synthetic_dataset["data.data_dir"], data_dir)
    dataset = {**synthetic_dataset, "data.data_dir": str(data_dir)}
    run_dir = tmp_path / "run"
    args = ["run", "semisup", "--epochs", "1", "--run-dir", str(run_dir), *sets(dataset, "tracking.wandb=disabled",
                                                                               "run.max_failures=0")]
    assert run_cli(*args, cwd=tmp_path, env={"RAY_TMPDIR": str(ray_tmp)}).returncode == 0
    [train_file] = data_dir.glob("idx-*/train.parquet")
    train_file.write_bytes(train_file.read_bytes()[:-100])  # damaged after the prepare stage checked it
    result = run_cli(*args, "--from", "train", cwd=tmp_path, env={"RAY_TMPDIR": str(ray_tmp)})
    assert result.returncode == 2, result.stderr[-3000:]
    [line] = result.stderr.strip().splitlines()
    assert "train.parquet" in line and "rebuild it with" in line


CONTROLLER_FAILURE = """
import sys
from pathlib import Path

from ray.train import UserCallback

from pipeline.config import load_config
from pipeline.ray import cluster, trainer
from pipeline.rundir import RunDir


class RefusingCallback(UserCallback):  # runs inside Ray Train's controller, so its error is the controller's
    def after_report(self, run_context, metrics, checkpoint):
        raise ValueError("the controller's own error")


config = load_config("semisup", sys.argv[2:])
run = RunDir(Path(sys.argv[1]))
run.path.mkdir()
plan = trainer.worker_plan(config)
cluster.connect(None, plan)
try:
    trainer.fit(config, run, plan, callbacks=[RefusingCallback()])
except trainer.ControllerFailed as err:
    print(err)
"""


@pytest.mark.slow
def test_a_controller_failure_names_the_controllers_own_error_and_keeps_its_log(
        synthetic_dataset, tmp_path, ray_tmp) -> None:
    # Ray's ControllerError puts the cause on its second line; the one-line report used to end at the colon.
    overrides = tiny_overrides(synthetic_dataset, "data.labels=100", "tracking.wandb=disabled", "train.epochs=1")
    result = subprocess.run([sys.executable, "-c", CONTROLLER_FAILURE, str(tmp_path / "run"), *overrides],
                            cwd=tmp_path, env={**os.environ, "RAY_TMPDIR": str(ray_tmp)},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    first, *rest = result.stdout.strip().splitlines()
    assert first == "Ray Train's controller failed: ValueError: the controller's own error"
    # What the controller logged (Ray writes it under the session directory, which a user seldom finds).
    assert any("Traceback" in line for line in rest) and any("after_report" in line for line in rest)
