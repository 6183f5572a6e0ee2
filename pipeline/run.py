"""`aae-pipeline run`: resolve the config, lay out the run directory, and chain the stages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.config import Config, config_to_yaml, load_config
from pipeline.errors import UserError
from pipeline.progress import console, summary_table
from pipeline.rundir import CONFIG_FILE, RunDir, atomic_write_text, new_run_dir
from pipeline.stages.prepare import prepare
from pipeline.stages.train import connect_cluster, train


def resolve_run(
    experiment: str | None, overrides: list[str], flags: dict[str, Any], run_dir: Path | None, resume: Path | None
) -> tuple[Config, RunDir]:
    """The validated config and its run directory, for a new run or for `--resume RUN_DIR`."""
    if resume is not None:
        return _resume(resume, overrides, flags)
    if experiment is None:
        raise UserError("no experiment given", "name one (see `aae-pipeline experiments`) or pass --resume RUN_DIR")
    config = load_config(experiment, overrides, flags)
    if run_dir is not None and (run_dir / CONFIG_FILE).exists():
        raise UserError(f"{run_dir} already holds a run", "pick a new --run-dir, or continue it with --resume")
    path = run_dir.resolve() if run_dir is not None else new_run_dir(config.experiment)
    return config, RunDir(path)


def _resume(path: Path, overrides: list[str], flags: dict[str, Any]) -> tuple[Config, RunDir]:
    config_file = path / CONFIG_FILE
    if not config_file.is_file():
        raise UserError(f"{path} is not a run directory (no {CONFIG_FILE})", "pass the directory a run created")
    # Overrides on resume apply on top of the saved config (e.g. a larger --epochs to train further).
    return load_config(str(config_file), overrides, flags), RunDir(path)


def run_experiment(config: Config, run: RunDir) -> dict[str, Any]:
    """prepare → train, each recorded in the manifest; returns the manifest's metrics."""
    connect_cluster(config)  # an unreachable or too-small cluster fails here, before anything is written
    run.path.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run.path / CONFIG_FILE, config_to_yaml(config))
    run.update_manifest(experiment=config.experiment, config=config.model_dump(mode="json"))
    console.print(f"run directory: {run.path}")
    with run.stage("prepare") as outputs:
        outputs.update(prepare(config))
    with run.stage("train") as outputs:
        final = train(config, run)
        outputs["checkpoint"] = str(run.checkpoint_dir / "best.pt")
    metrics = run.update_manifest(metrics=final)["metrics"]
    console.print(summary_table(f"{config.experiment}: final metrics", metrics))
    console.print(f"results: {run.path}")
    return metrics
