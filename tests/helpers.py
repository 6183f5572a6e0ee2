"""Helpers the test files share (run directories made in-process, without Ray)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.config import config_to_yaml, load_config
from pipeline.loop import WorkerContext, train_loop
from pipeline.run import run_key
from pipeline.rundir import CONFIG_FILE, RunDir, atomic_write_text
from tests.conftest import tiny_overrides

EVALUATE_FAST = ("evaluate.parzen_samples=200", "evaluate.parzen_validation=100", "tracking.wandb=disabled")


def trained_run(dataset: dict[str, str], path: Path, experiment: str, *extra: str, evaluated: bool = True) -> RunDir:
    """A run directory as `aae-pipeline run` leaves it (config, manifest, checkpoints and, if `evaluated`,
    evaluation.json), trained for two epochs on the tiny synthetic set with small nets, in this process."""
    from pipeline.stages.evaluate import evaluate

    config = load_config(experiment, tiny_overrides(dataset, "train.epochs=2", *EVALUATE_FAST, *extra))
    path.mkdir(parents=True)
    run = RunDir(path)
    atomic_write_text(path / CONFIG_FILE, config_to_yaml(config))
    run.update_manifest(experiment=config.experiment, run_key=run_key(config), config=config.model_dump(mode="json"),
                        commands=[f"aae-pipeline run {experiment} --epochs 2"])
    run.record_stage("prepare", status="done", outputs={"image_shape": [28, 28]})
    train_loop(config, run, WorkerContext())
    run.record_stage("train", status="done")
    if evaluated:
        evaluate(config, run)
    return run


@contextmanager
def held_by_another_process(directory: Path) -> Iterator[subprocess.Popen]:
    """Another live process holds `directory` (a run's or a sweep's) for the block, as a driver would; it is
    killed afterwards, so the kernel drops its lock."""
    directory.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; from pathlib import Path; from pipeline.rundir import holding\n"
         f"with holding(Path({str(directory)!r}), ''):\n    print('held', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait()
