"""The pipeline's stages in order, each a plain function `(Config, RunDir) -> dict` with the inputs it hashes.

A stage is skipped on a re-run when its recorded input hash matches: the hash covers the config keys it
reads and the files earlier stages produced for it, so changing either redoes it and every stage after.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.rundir import RunDir, sha256_file

StageFn = Callable[[Config, RunDir], dict[str, Any]]


@dataclass(frozen=True)
class Stage:
    """One step of the chain: what it runs, which config sections and files it depends on, where it runs."""

    name: str
    run: StageFn
    config_keys: tuple[str, ...]  # top-level config sections (or section.key) the stage reads
    input_files: Callable[[RunDir], list[Path]]  # files from earlier stages it reads
    as_task: bool = True  # a Ray task; `train` instead drives a TorchTrainer from the driver


def input_hash(stage: Stage, config: Config, run: RunDir) -> str:
    """sha256 over the stage's config keys and the bytes of its input files."""
    dumped = config.model_dump(mode="json")
    digest = hashlib.sha256()
    for key in stage.config_keys:
        section, _, sub = key.partition(".")
        value = dumped[section] if not sub else dumped[section][sub]
        digest.update(json.dumps([key, value], sort_keys=True).encode())
    for path in stage.input_files(run):
        digest.update(path.name.encode())
        digest.update(bytes.fromhex(sha256_file(path)) if path.exists() else b"missing")
    return digest.hexdigest()[:16]


def _prepare(config: Config, run: RunDir) -> dict[str, Any]:
    from pipeline.stages.prepare import prepare

    return prepare(config)


def _train(config: Config, run: RunDir) -> dict[str, Any]:
    from pipeline.stages.train import train

    return train(config, run)


def _evaluate(config: Config, run: RunDir) -> dict[str, Any]:
    from pipeline.stages.evaluate import evaluate

    return {"metrics": evaluate(config, run)}


def _visualize(config: Config, run: RunDir) -> dict[str, Any]:
    from pipeline.stages.visualize import visualize

    return {"figures": visualize(config, run)}


def _track(config: Config, run: RunDir) -> dict[str, Any]:
    from pipeline.stages.track import track

    return track(config, run)


def _dataset_manifest(run: RunDir) -> list[Path]:
    outputs = run.read_manifest().get("stages", {}).get("prepare", {}).get("outputs", {})
    return [Path(outputs["dataset_dir"]) / "manifest.json"] if "dataset_dir" in outputs else []


def _best_checkpoint(run: RunDir) -> list[Path]:
    return [run.best_checkpoint]


def _trained(run: RunDir) -> list[Path]:
    return [run.best_checkpoint, run.metrics_path]


def _evaluated(run: RunDir) -> list[Path]:
    return [run.path / "evaluation.json", *sorted((run.path / "figures").glob("*.png"))]


STAGES: tuple[Stage, ...] = (
    Stage("prepare", _prepare, ("data",), lambda run: []),
    Stage("train", _train, ("data", "model", "train", "run.workers", "run.gpus_per_worker", "run.amp"),
          _dataset_manifest, as_task=False),
    Stage("evaluate", _evaluate, ("data", "model", "evaluate"), _best_checkpoint),
    Stage("visualize", _visualize, ("data", "model"), _trained),
    Stage("track", _track, ("tracking",), lambda run: [*_trained(run), *_evaluated(run)]),
)
STAGE_NAMES = tuple(stage.name for stage in STAGES)
