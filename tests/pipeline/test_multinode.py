"""A real multi-node Ray cluster on this machine: a head with no CPUs (as in the compose cluster) and two
worker nodes with one CPU each, every node its own raylet and object store, started with `ray start` in a
private HOME and RAY_TMPDIR and ended with its process group. Each test asserts where its workers and
stages actually ran, from the run's manifest."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.helpers import (
    RayCluster,
    cli_command,
    cli_env,
    epochs_logged,
    manifest,
    sets,
    trained_run,
    wait_for,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    root = Path(tempfile.mkdtemp(prefix="aae-nodes-", dir="/tmp"))  # short: Ray's socket paths must fit
    nodes = RayCluster(root)
    try:
        nodes.start_node("node_head", cpus=0)
        nodes.start_node("node_a", cpus=1)
        nodes.start_node("node_b", cpus=1)
        yield nodes
    finally:
        nodes.stop()
        shutil.rmtree(root, ignore_errors=True)


def stage_outputs(run_dir: Path) -> dict[str, dict]:
    return {name: record.get("outputs", {}) for name, record in manifest(run_dir)["stages"].items()}


def test_two_workers_train_on_two_nodes_and_every_stage_writes_the_one_run_directory(
    cluster, synthetic_dataset, tmp_path
) -> None:
    run_dir = tmp_path / "run"
    result = cluster.cli("run", "semisup", "--workers", "2", "--epochs", "2", "--address", cluster.address,
                         "--run-dir", str(run_dir), *sets(synthetic_dataset, "tracking.wandb=offline"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    names = cluster.node_ids()
    outputs = stage_outputs(run_dir)
    workers = outputs["train"]["workers"]
    assert [worker["rank"] for worker in workers] == [0, 1]
    assert sorted(names[worker["node_id"]] for worker in workers) == ["node_a", "node_b"]  # one on each node
    # The driver's own stage ran where the driver attached (on one machine Ray picks any local raylet).
    assert outputs["prepare"]["node"]["node_id"] in names
    for stage in ("evaluate", "visualize", "track"):  # Ray tasks: the CPU-less head cannot hold them
        assert names[outputs[stage]["node"]["node_id"]] in {"node_a", "node_b"}, stage
    assert epochs_logged(run_dir) == [1, 2]
    assert (run_dir / "evaluation.json").is_file() and list((run_dir / "figures").glob("*.png"))
    assert list((run_dir / "wandb").glob("offline-run-*"))


def test_a_killed_worker_group_resumes_from_the_last_checkpoint_on_both_nodes(
    cluster, synthetic_dataset, tmp_path
) -> None:
    run_dir = tmp_path / "run"
    # SIGKILL rank 1 at step 2 of the second epoch: Ray Train restarts both workers from epoch 1's checkpoint.
    result = cluster.cli("run", "semisup", "--workers", "2", "--epochs", "3", "--address", cluster.address,
                         "--run-dir", str(run_dir), *sets(synthetic_dataset, "tracking.wandb=disabled"),
                         cwd=tmp_path, fault="1:2:1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run_dir / "fault-injected.txt").exists()
    assert epochs_logged(run_dir) == [1, 2, 3]  # epoch 1 not redone
    names = cluster.node_ids()
    workers = stage_outputs(run_dir)["train"]["workers"]
    assert [worker["starts"] for worker in workers] == [2, 2]  # the whole group started again
    assert sorted(names[worker["node_id"]] for worker in workers) == ["node_a", "node_b"]
    recorded = manifest(run_dir)
    assert recorded["stages"]["train"]["status"] == "done" and recorded["metrics"]["epoch"] == 3
    assert "val/error" in recorded["metrics"] and "train/recon_loss" in recorded["metrics"]
    assert "epoch   3/3" in result.stdout
    assert "\x1b[" not in result.stdout + result.stderr  # Ray's "(raylet) A worker died…" notice, uncoloured
    log = (run_dir / "run.log").read_text()
    assert "epoch   3/3" in log and "\x1b[" not in log  # the run's log holds what was printed, uncoloured


def _trial_node(trial: Path) -> str | None:
    try:
        return json.loads((trial / "ray" / "workers" / "rank-0.json").read_text())["node_id"]
    except (OSError, ValueError):
        return None


def test_a_sweep_survives_losing_a_worker_node_and_its_trial_resumes_elsewhere(
    cluster, synthetic_dataset, tmp_path
) -> None:
    cluster.start_node("node_victim", cpus=1)
    victim = next(node for node, name in cluster.node_ids().items() if name == "node_victim")
    (tmp_path / "space.yaml").write_text("model.params.z_dim: {grid: [2, 3, 4]}\n")
    epochs = 3
    sweep = tmp_path / "sweep"
    # Every trial holds after its first epoch until sweep/release exists: the victim's trial is mid-training when
    # its node dies, however fast an epoch is.
    with subprocess.Popen(
        cli_command("tune", "semisup", "--search", "grid", "--scheduler", "fifo", "--space", "space.yaml",
                    "--max-concurrent", "3", "--address", cluster.address, "--epochs", str(epochs),
                    "--sweep-dir", "sweep", *sets(synthetic_dataset, "tracking.wandb=disabled"), fault="hold:1"),
        cwd=tmp_path, env=cli_env(cluster.env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    ) as driver:
        def victim_trial() -> Path | None:
            trials = sorted((sweep / "trials").glob("*")) if (sweep / "trials").is_dir() else []
            return next((t for t in trials if _trial_node(t) == victim and epochs_logged(t)), None)

        try:
            wait_for(lambda: victim_trial() is not None or driver.poll() is not None, 300, "a trial on the victim")
            lost = victim_trial()
            assert lost is not None, driver.stdout.read() if driver.poll() is not None else "no trial landed there"
            cluster.stop_node("node_victim", abruptly=True)  # the node dies with its trial mid-training
        finally:
            if sweep.is_dir():  # a failure above must not leave the driver holding its trials
                (sweep / "release").touch()
        output, _ = driver.communicate(timeout=600)
    assert driver.returncode == 0, output[-3000:]
    assert json.loads((sweep / "sweep.json").read_text())["status"] == "done"
    for trial in sorted((sweep / "trials").iterdir()):
        logged = epochs_logged(trial)
        assert logged[-1] == epochs and logged == sorted(set(logged)), (trial.name, logged)  # none trained twice
    record = json.loads((lost / "ray" / "workers" / "rank-0.json").read_text())
    assert record["starts"] == 2 and record["node_id"] != victim  # started again, on a surviving node


def test_a_sweep_whose_driver_was_killed_resumes_on_the_cluster_without_redoing_finished_trials(
    cluster, synthetic_dataset, tmp_path
) -> None:
    (tmp_path / "space.yaml").write_text("model.params.z_dim: {grid: [2, 3, 4, 5]}\n")
    sweep = tmp_path / "sweep"
    with subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "tune", "semisup", "--search", "grid", "--scheduler", "fifo",
         "--space", "space.yaml", "--address", cluster.address, "--epochs", "3", "--sweep-dir", "sweep",
         *sets(synthetic_dataset, "tracking.wandb=disabled")],
        cwd=tmp_path, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    ) as driver:
        printed = []
        for line in driver.stdout:  # SIGKILL the driver (no chance to clean up) once a trial has finished
            printed.append(line)
            if " finished: " in line:
                driver.kill()
                first = line.split()[1]
                break
        else:
            pytest.fail("the sweep ended before a trial finished:\n" + "".join(printed)[-3000:])
        driver.wait(timeout=60)
    assert json.loads((sweep / "sweep.json").read_text())["status"] == "running"  # it never got to say more
    done_before = (sweep / "trials" / first / "metrics.jsonl").read_text()
    resumed = cluster.cli("tune", "--resume", str(sweep), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((sweep / "sweep.json").read_text())["status"] == "done"
    # The finished trial trained nothing more. (Tune may not have saved its end before the kill: the restore then
    # starts it again from its last checkpoint, which ends at once, so its "finished" line may be printed again.)
    assert (sweep / "trials" / first / "metrics.jsonl").read_text() == done_before
    assert [row["status"] for row in pq.read_table(sweep / "trials.parquet").to_pylist()] == ["completed"] * 4
    trials = sorted((sweep / "trials").iterdir())
    assert len(trials) == 4
    for trial in trials:
        logged = epochs_logged(trial)
        assert logged[-1] == 3 and logged == sorted(set(logged)), (trial.name, logged)  # no epoch trained twice
    # The sweep spread its trials over the two one-CPU nodes, one trial on each at a time.
    assert "up to 2 at once" in "".join(printed)
    names = cluster.node_ids()
    assert {names.get(_trial_node(trial)) for trial in trials} == {"node_a", "node_b"}


def test_predict_on_the_cluster_scores_on_both_nodes_and_writes_what_one_process_writes(
    cluster, synthetic_dataset, tmp_path
) -> None:
    run = trained_run(synthetic_dataset, tmp_path / "run", "semisup", "data.labels=100", evaluated=False)
    data = ["--data", synthetic_dataset["data.dataset"], "--data-dir", synthetic_dataset["data.data_dir"]]
    here = cluster.cli("predict", str(run.path), *data, "--out", str(tmp_path / "here.parquet"), cwd=tmp_path)
    assert here.returncode == 0, here.stderr[-3000:]
    there = cluster.cli("predict", str(run.path), *data, "--out", str(tmp_path / "there"), "--address",
                        cluster.address, cwd=tmp_path)
    assert there.returncode == 0, there.stderr[-3000:]
    manifest = json.loads((tmp_path / "there" / "_manifest.json").read_text())
    names = cluster.node_ids()
    assert sorted(names[node] for node in manifest["scored_by"]) == ["node_a", "node_b"]  # both nodes scored rows
    assert sum(manifest["scored_by"].values()) == manifest["rows"] == 300
    local, shards = pq.read_table(tmp_path / "here.parquet"), pq.read_table(tmp_path / "there").sort_by("index")
    assert shards.select(local.column_names).equals(local)


def test_a_node_that_cannot_see_the_run_directory_is_refused_in_one_line(
    cluster, synthetic_dataset, tmp_path
) -> None:
    # A third node in its own mount namespace, with an empty tmpfs over the run directory's parent: what a
    # node on another machine without the shared mount sees. (Last in this file: it leaves the node dead.)
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs `unshare -m` (mount namespaces) to hide a directory from one node")
    hidden = tmp_path / "local-disk"
    hidden.mkdir()
    cluster.start_node("node_blind", cpus=1, prefix=[
        "unshare", "-m", "--propagation", "private", "sh", "-c", f'mount -t tmpfs none "{hidden}" && exec "$0" "$@"'])
    try:
        result = cluster.cli("run", "semisup", "--workers", "2", "--epochs", "1", "--address", cluster.address,
                             "--run-dir", str(hidden / "run"), *sets(synthetic_dataset, "tracking.wandb=disabled"),
                             cwd=tmp_path)
        assert result.returncode == 2, result.stderr[-3000:]
        [line] = result.stderr.strip().splitlines()
        assert "cannot see the run directory" in line and "--run-dir" in line
        assert not (hidden / "run" / "checkpoints").exists()  # refused before any training
    finally:
        cluster.stop_node("node_blind")
