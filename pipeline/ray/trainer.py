"""The Ray Train runner: a TorchTrainer whose workers run pipeline.training.train on their shard."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.ray.cluster import WorkerResources
from pipeline.rundir import RunDir

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
    train(config, RunDir(Path(loop_config["run_dir"])), worker, report=lambda metrics: ray.train.report(metrics))


def fit(config: Config, run: RunDir, plan: WorkerResources) -> None:
    """Run the TorchTrainer to completion; Ray restarts the worker group from the last checkpoint on failure."""
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
            name="train",
            storage_path=str(run.path / "ray"),
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
