"""The Ray Train runner: a TorchTrainer whose workers run pipeline.training.train on their shard."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.ray.cluster import WorkerResources
from pipeline.rundir import RunDir
from pipeline.tracking import NullTracker, Tracker, dataset_artifact, make_tracker

# Tests set this to "epoch:step:rank" to SIGKILL one worker once and watch the run recover.
FAULT_ENV = "AAE_INJECT_FAULT"


def train_worker(loop_config: dict[str, Any]) -> None:
    """What each Ray Train worker runs: set threads and device, then the plain training loop."""
    import ray.train
    import torch

    from pipeline.training import WorkerContext, train

    torch.set_num_threads(loop_config["threads"])
    context = ray.train.get_context()
    device = torch.device("cpu")
    if loop_config["use_gpu"]:
        import ray.train.torch

        device = ray.train.torch.get_device()
    worker = WorkerContext(
        rank=context.get_world_rank(),
        world=context.get_world_size(),
        device=device,
        fault=loop_config.get("fault"),
    )
    config = Config.model_validate(loop_config["config"])
    run = RunDir(Path(loop_config["run_dir"]))
    # Only rank 0 tracks (Ray's setup_wandb(rank_zero_only=True) misbehaves under Train V2); others get a no-op.
    tracker = start_train_tracking(config, run) if worker.rank == 0 else NullTracker()

    def report(metrics: dict[str, float]) -> None:
        tracker.log_metrics(metrics, step=int(metrics["epoch"]))  # numbers only: images never go through Ray
        ray.train.report(metrics)

    try:
        train(config, run, worker, report=report)
        best = run.checkpoint_dir / "best.pt"
        if best.exists():
            tracker.log_artifact("model", "model", [best], uses=[dataset_artifact(config)[0]])
    finally:
        tracker.finish()


def start_train_tracking(config: Config, run: RunDir) -> Tracker:
    """The `train` W&B run of this pipeline run, with the prepared dataset declared as its input."""
    tracker = make_tracker(config, run, "train")
    name, manifest = dataset_artifact(config)
    if manifest.exists():
        tracker.use_artifact(name, "dataset", [manifest], metadata={"source": config.data.dataset})
    return tracker


def fit(config: Config, run: RunDir, plan: WorkerResources, name: str = "train", callbacks: list | None = None) -> None:
    """Run the TorchTrainer to completion; Ray restarts the worker group from the last checkpoint on failure.

    A Tune trial passes its own name and a TuneReportCallback, so each epoch's metrics reach the scheduler."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    use_gpu = plan.gpus > 0
    resources = {"CPU": plan.cpus, **({"GPU": plan.gpus} if use_gpu else {})}
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={
            "config": config.model_dump(mode="json"),
            "run_dir": str(run.path),
            "threads": plan.threads,
            "use_gpu": use_gpu,
            "fault": _fault_from_env(run),
        },
        scaling_config=ScalingConfig(num_workers=plan.workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=name,
            storage_path=str(run.path / "ray"),
            callbacks=callbacks,
            failure_config=FailureConfig(max_failures=config.run.max_failures),
        ),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
    )
    trainer.fit()


def _fault_from_env(run: RunDir) -> dict[str, Any] | None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return None
    epoch, step, rank = (int(part) for part in spec.split(":"))
    return {"epoch": epoch, "step": step, "rank": rank, "marker": str(run.path / "fault-injected.txt")}
