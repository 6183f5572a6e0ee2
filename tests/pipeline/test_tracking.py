"""W&B tracking: what an offline run records (read back from its .wandb file), failure tolerance, modes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import wandb
from matplotlib.image import imsave

from pipeline.config import load_config
from pipeline.rundir import RunDir
from pipeline.stages.track import track
from pipeline.tracking import (
    NullTracker,
    WandbTracker,
    make_tracker,
    recorded_errors,
    resolve_mode,
    sync_command,
    wandb_run_id,
)
from tests.conftest import TINY_MODEL, tiny_overrides
from tests.helpers import evaluated_run, new_run, sets
from tests.wandb_offline import OfflineRun, find_offline_runs


def semisup(mode: str, *extra: str):
    return load_config("semisup", [f"tracking.wandb={mode}", *TINY_MODEL, *extra])


def by_name(offline: OfflineRun) -> dict[str, dict]:
    return {artifact["name"]: artifact for artifact in offline.artifacts}


def test_offline_tracker_records_rows_images_tables_and_artifacts(tmp_path) -> None:
    run = new_run(tmp_path)
    manifest, weights, figure = tmp_path / "manifest.json", tmp_path / "best.pt", tmp_path / "latent.png"
    manifest.write_text("{}")
    weights.write_bytes(b"weights")
    imsave(figure, np.zeros((8, 8)))

    tracker = make_tracker(semisup("offline"), run, "train")
    assert isinstance(tracker, WandbTracker)
    tracker.use_artifact("mnist", "dataset", [manifest])
    tracker.log_metrics({"train/recon_loss": 0.5, "val/error": 10.0, "epoch": 1}, step=1)
    tracker.log_metrics({"train/recon_loss": 0.25, "val/error": 8.0, "epoch": 2}, step=2)
    tracker.log_images({"latent": figure})
    tracker.log_table("per_class_error", ["class", "error %"], [[0, 1.5], [1, 2.5]])
    tracker.log_summary({"test/error": 1.25})
    tracker.log_artifact("model", "model", [weights], uses=["mnist"])
    tracker.finish()
    assert tracker.error is None

    (offline,) = find_offline_runs(run.path / "wandb").values()
    assert offline.run["id"] == wandb_run_id(run, "train")
    assert (offline.run["group"], offline.run["job_type"]) == ("semisup-20250101-120000", "train")
    assert offline.config["experiment"] == "semisup" and offline.config["tracking"]["wandb"] == "offline"
    rows = [(row["_step"], row["train/recon_loss"], row["val/error"]) for row in offline.history if "epoch" in row]
    assert rows == [(1, 0.5, 10.0), (2, 0.25, 8.0)]
    image = next(row["figures/latent/path"] for row in offline.history if "figures/latent/path" in row)
    assert image.startswith("media/images/") and (offline.files_dir / image).is_file()
    table = next(row["tables/per_class_error/path"] for row in offline.history if "tables/per_class_error/path" in row)
    assert json.loads((offline.files_dir / table).read_text())["data"] == [[0, 1.5], [1, 2.5]]
    assert offline.summary["test/error"] == 1.25
    artifacts = by_name(offline)
    assert artifacts["mnist"]["type"] == "dataset" and artifacts["mnist"]["use_after_commit"]  # an input
    assert artifacts["model"]["files"] == ["best.pt"] and not artifacts["model"]["use_after_commit"]  # an output
    assert artifacts["model"]["metadata"]["made_from"] == ["mnist"]
    assert "semisup-20250101-120000" in artifacts["model"]["aliases"]
    # The copies an offline run keeps of its outputs for `wandb sync` stay inside the run directory; an input is
    # another run's output, read from where it is rather than copied again.
    assert all(path.startswith(str(run.path / "wandb")) for path in artifacts["model"]["staged"])
    assert artifacts["mnist"]["staged"] == [str(manifest)]


def test_track_stage_logs_the_evaluation_run_with_model_lineage(tmp_path, capsys) -> None:
    run = evaluated_run(tmp_path)
    outputs = track(semisup("offline"), run)
    assert outputs["wandb_mode"] == "offline" and "wandb_error" not in outputs
    assert outputs["wandb_runs"] == [wandb_run_id(run, "train"), wandb_run_id(run, "evaluate")]
    assert outputs["wandb_sync"] == f"wandb sync -n 1 {run.path / 'wandb'}/offline-run-*"
    assert outputs["wandb_sync"] in capsys.readouterr().out

    offline = find_offline_runs(Path(outputs["wandb_dir"]))[wandb_run_id(run, "evaluate")]
    assert offline.run["job_type"] == "evaluate" and offline.run["group"] == run.path.name
    assert offline.summary["test/error"] == 4.5
    images = [key for row in offline.history for key in row if key.endswith("/_type") and row[key] == "image-file"]
    assert sorted(images) == ["figures/latent_scatter/_type", "figures/samples/_type"]
    assert any(row.get("tables/per_class_error/nrows") == 2 for row in offline.history)
    artifacts = by_name(offline)
    # The model as `export` writes it, once: whoever downloads the artifact loads it with load_run(folder).
    model = artifacts["model"]
    assert not model["use_after_commit"] and model["files"] == ["README.md", "config.json", "model.safetensors"]
    assert model["metadata"]["made_from"] == ["mnist"] and model["metadata"]["test/error"] == 4.5
    assert not list((run.path / "wandb").glob(".model-*"))  # its scratch folder is gone; W&B keeps its own copy
    assert artifacts["evaluation"]["type"] == "evaluation" and artifacts["evaluation"]["metadata"]["made_from"] == [
        "model"
    ]


def test_the_sync_hint_pastes_into_a_shell_whatever_the_run_directory_is_called(tmp_path) -> None:
    run = tmp_path / "my runs" / "semisup (1)"
    (run / "wandb" / "offline-run-1").mkdir(parents=True)
    listed = subprocess.run(["bash", "-c", sync_command(run).replace("wandb sync -n 1", "ls -d")],
                            capture_output=True, text=True)
    assert listed.stdout.strip() == str(run / "wandb" / "offline-run-1"), listed.stderr


def test_a_failing_wandb_warns_once_and_the_stage_still_returns(tmp_path, monkeypatch, capsys) -> None:
    def broken_init(**kwargs):
        raise RuntimeError("wandb service unreachable\nlong traceback text")

    monkeypatch.setattr(wandb, "init", broken_init)
    outputs = track(semisup("offline"), evaluated_run(tmp_path))
    assert outputs["wandb_error"] == "init: RuntimeError wandb service unreachable"
    warnings = [line for line in capsys.readouterr().out.splitlines() if "W&B tracking stopped" in line]
    assert len(warnings) == 1


def test_an_error_mid_run_turns_the_tracker_into_a_no_op(tmp_path, capsys) -> None:
    run = new_run(tmp_path)
    tracker = make_tracker(semisup("offline"), run, "evaluate")
    tracker.log_images({"missing": tmp_path / "no-such.png"})  # wandb.Image raises on a missing file
    tracker.log_summary({"test/error": 1.0})
    tracker.log_artifact("evaluation", "evaluation", [tmp_path / "also-missing.json"])
    tracker.finish()
    assert tracker.error.startswith("images: ")
    assert capsys.readouterr().out.count("W&B tracking stopped") == 1


@pytest.mark.slow
def test_training_completes_when_wandb_cannot_start(synthetic_dataset, tmp_path, monkeypatch, capsys) -> None:
    import ray.train

    from pipeline.ray.trainer import train_worker

    reported = []
    monkeypatch.setattr(wandb, "init", lambda **kwargs: (_ for _ in ()).throw(ConnectionError("offline")))
    monkeypatch.setattr(ray.train, "get_context", lambda: SimpleNamespace(get_world_rank=lambda: 0,
                                                                          get_world_size=lambda: 1))
    monkeypatch.setattr(ray.train, "report", reported.append)
    config = load_config("semisup", tiny_overrides(synthetic_dataset, "data.labels=100", "train.epochs=1",
                                                   "data.limit=400", "tracking.wandb=offline"))
    run = new_run(tmp_path)
    train_worker({"config": config, "run_dir": str(run.path), "threads": 1, "use_gpu": False, "report_to_tune": True})
    assert [row["epoch"] for row in reported] == [1]
    assert run.best_checkpoint.exists()
    assert capsys.readouterr().out.count("W&B tracking stopped") == 1
    # A Ray worker's print never reaches the user: the error is also left for the driver to report.
    assert recorded_errors(run.path) == {"train": "init: ConnectionError offline"}


def test_disabled_tracking_creates_nothing(tmp_path) -> None:
    run = new_run(tmp_path)
    tracker = make_tracker(semisup("disabled"), run, "train")
    assert isinstance(tracker, NullTracker)
    tracker.log_metrics({"val/error": 1.0}, step=1)
    tracker.finish()
    assert track(semisup("disabled"), run) == {"wandb_mode": "disabled"}  # needs no evaluation.json either
    assert list(run.path.iterdir()) == []


@pytest.mark.parametrize(
    ("setting", "env", "netrc", "expected"),
    [
        ("auto", {}, None, "offline"),
        ("auto", {}, "machine api.wandb.ai login user password k" + "0" * 39, "online"),
        ("auto", {}, "machine example.com login user password secret", "offline"),
        ("auto", {"WANDB_API_KEY": "k" * 40}, None, "online"),
        ("auto", {"WANDB_MODE": "disabled", "WANDB_API_KEY": "k" * 40}, None, "disabled"),
        ("online", {}, None, "offline"),  # never a login prompt: no credentials means offline
        ("offline", {"WANDB_API_KEY": "k" * 40}, None, "offline"),
    ],
)
def test_auto_mode_goes_online_only_with_credentials(setting, env, netrc, expected, tmp_path, monkeypatch) -> None:
    for key in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL", "NETRC"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if netrc is not None:
        (tmp_path / ".netrc").write_text(netrc + "\n")
    assert resolve_mode(setting) == expected


@pytest.mark.slow
def test_ray_run_streams_each_epoch_to_the_train_run(ray_cluster, synthetic_dataset, tmp_path) -> None:
    run_dir = tmp_path / "run"
    result = ray_cluster.cli(
        "run", "semisup", "--workers", "2", "--epochs", "2", "--run-dir", str(run_dir), "--wandb", "offline",
        "--address", ray_cluster.address,
        *sets(synthetic_dataset, "evaluate.parzen_samples=200", "evaluate.parzen_validation=100"), cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "wandb:" not in result.stdout + result.stderr  # wandb's own console output stays quiet
    runs = find_offline_runs(run_dir / "wandb")
    trained = runs[wandb_run_id(RunDir(run_dir), "train")]
    rows = [row for row in trained.history if "epoch" in row]
    assert [row["epoch"] for row in rows] == [1, 2]
    assert all(isinstance(row["train/recon_loss"], float) and "val/error" in row for row in rows)
    assert by_name(trained)[Path(json.loads((run_dir / "manifest.json").read_text())["stages"]["prepare"]
                                 ["outputs"]["dataset_dir"]).name]["use_after_commit"]
    evaluated = runs[wandb_run_id(RunDir(run_dir), "evaluate")]
    assert "test/error" in evaluated.summary
    # The model is logged once, by the evaluate run, as the folder `export` writes.
    assert "model" not in by_name(trained) and by_name(evaluated)["model"]["files"][-1] == "model.safetensors"
