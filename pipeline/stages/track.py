"""Stage 5: record the evaluation in the experiment tracker (W&B `evaluate` run; see pipeline.tracking)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.errors import UserError, command
from pipeline.progress import console
from pipeline.rundir import RunDir
from pipeline.stages import EVALUATION_FILE, FIGURE_DIR
from pipeline.stages.evaluate import read_evaluation
from pipeline.tracking import (
    WANDB_DIR,
    Tracker,
    dataset_artifact,
    make_tracker,
    recorded_errors,
    resolve_mode,
    sync_command,
    wandb_run_id,
)


def track(config: Config, run: RunDir) -> dict[str, Any]:
    """Log evaluation.json's metrics and tables, the figures, the model (as the folder `export` writes) and the
    evaluation artifact; says where they went."""
    if resolve_mode(config.tracking.wandb) == "disabled":
        return {"wandb_mode": "disabled"}
    evaluation = _read_evaluation(run)
    tracker = make_tracker(config, run, "evaluate")
    dataset, dataset_manifest = dataset_artifact(config)
    if dataset_manifest.exists():
        tracker.use_artifact(dataset, "dataset", [dataset_manifest], metadata={"source": config.data.dataset})
    metrics = evaluation.get("metrics", {})
    tracker.log_summary(metrics)
    tracker.log_images({path.stem: path for path in sorted((run.path / FIGURE_DIR).glob("*.png"))})
    for name, table in evaluation.get("tables", {}).items():
        tracker.log_table(name, table["columns"], table["rows"])
    if run.best_checkpoint.exists():
        _log_model(tracker, run, dataset, metrics)
    tracker.log_artifact("evaluation", "evaluation", [run.path / EVALUATION_FILE], uses=["model"], metadata=metrics)
    tracker.finish()
    return _outputs(tracker, run)


def _log_model(tracker: Tracker, run: RunDir, dataset: str, metrics: dict[str, Any]) -> None:
    """The model as the folder `aae-pipeline export` writes, so that whoever downloads the artifact loads it with
    `load_run(folder)`. Written to a scratch folder: W&B keeps its own copy until the run is uploaded."""
    from pipeline.export import write_model_folder

    (run.path / WANDB_DIR).mkdir(exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=".model-", dir=run.path / WANDB_DIR))
    try:
        write_model_folder(run.path, folder)
        tracker.log_artifact("model", "model", sorted(folder.iterdir()), uses=[dataset], metadata=metrics)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _outputs(tracker: Tracker, run: RunDir) -> dict[str, Any]:
    """What the manifest records about tracking, errors included: the driver prints them (a task's output is lost)."""
    if tracker.mode == "disabled":
        return {"wandb_mode": "disabled"}
    wandb_dir = run.path / WANDB_DIR
    outputs: dict[str, Any] = {
        "wandb_mode": tracker.mode,
        "wandb_dir": str(wandb_dir),
        "wandb_group": run.path.name,
        "wandb_runs": [wandb_run_id(run, "train"), wandb_run_id(run, "evaluate")],
    }
    train_error = recorded_errors(run.path).get("train")  # left by Ray Train's rank 0
    if train_error:
        outputs["wandb_train_error"] = train_error
    if tracker.error:
        outputs["wandb_error"] = tracker.error
    elif tracker.mode == "offline":
        outputs["wandb_sync"] = sync_command(run.path)
        console.print(f"W&B runs saved offline; upload them later with: {outputs['wandb_sync']}")
    return outputs


def _read_evaluation(run: RunDir) -> dict[str, Any]:
    """evaluation.json as the evaluate stage wrote it; missing or corrupt is something the user can fix."""
    fix = f"evaluate the run first: `{command('aae-pipeline eval', run.path)} --force`"
    try:
        evaluation = read_evaluation(run)
    except json.JSONDecodeError:
        raise UserError(f"{run.path / EVALUATION_FILE} is not valid JSON", fix) from None
    if evaluation is None:
        raise UserError(f"{run.path} has no {EVALUATION_FILE}", fix)
    return evaluation
