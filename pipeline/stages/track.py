"""Stage 5: record the evaluation in the experiment tracker (W&B `evaluate` run; see pipeline.tracking)."""

from __future__ import annotations

import json
from typing import Any

from pipeline.config import Config
from pipeline.errors import UserError
from pipeline.progress import console
from pipeline.rundir import RunDir
from pipeline.stages import EVALUATION_FILE, FIGURE_DIR
from pipeline.stages.evaluate import read_evaluation
from pipeline.tracking import (
    WANDB_DIR,
    Tracker,
    make_tracker,
    recorded_errors,
    resolve_mode,
    sync_command,
    wandb_run_id,
)


def track(config: Config, run: RunDir) -> dict[str, Any]:
    """Log evaluation.json's metrics and tables, the figures and the evaluation artifact; says where they went."""
    if resolve_mode(config.tracking.wandb) == "disabled":
        return {"wandb_mode": "disabled"}
    evaluation = _read_evaluation(run)
    tracker = make_tracker(config, run, "evaluate")
    best = run.best_checkpoint
    if best.exists():
        tracker.use_artifact("model", "model", [best])  # the version the train run logged, matched by content
    metrics = evaluation.get("metrics", {})
    tracker.log_summary(metrics)
    tracker.log_images({path.stem: path for path in sorted((run.path / FIGURE_DIR).glob("*.png"))})
    for name, table in evaluation.get("tables", {}).items():
        tracker.log_table(name, table["columns"], table["rows"])
    tracker.log_artifact("evaluation", "evaluation", [run.path / EVALUATION_FILE], uses=["model"], metadata=metrics)
    tracker.finish()
    return _outputs(tracker, run)


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
    fix = f"evaluate the run first: `aae-pipeline eval {run.path} --force`"
    try:
        evaluation = read_evaluation(run)
    except json.JSONDecodeError:
        raise UserError(f"{run.path / EVALUATION_FILE} is not valid JSON", fix) from None
    if evaluation is None:
        raise UserError(f"{run.path} has no {EVALUATION_FILE}", fix)
    return evaluation
