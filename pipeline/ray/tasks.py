"""Stages other than training run as Ray tasks: on a cluster they land on any node that sees the run dir."""

from __future__ import annotations

from typing import Any

from pipeline.config import Config
from pipeline.rundir import RunDir
from pipeline.stages import StageFn


def run_as_task(fn: StageFn, config: Config, run: RunDir) -> dict[str, Any]:
    """Run one stage function in a Ray task and return its outputs; a user error inside stays a UserError."""
    import ray
    from ray.exceptions import RayTaskError

    task = ray.remote(num_cpus=1, max_retries=0)(_call)
    try:
        return ray.get(task.remote(fn, config, RunDir(run.path.resolve())))  # one path on every node
    except RayTaskError as err:
        cause = getattr(err, "cause", None)
        if isinstance(cause, BaseException):
            raise cause from None
        raise


def _call(fn: StageFn, config: Config, run: RunDir) -> dict[str, Any]:
    import torch

    from pipeline.ray.nodes import this_node

    torch.set_num_threads(max(1, int(ray_cpus())))
    return {**fn(config, run), "node": this_node()}  # the manifest says where each stage ran


def ray_cpus() -> float:
    """CPUs Ray granted this task (threads to use)."""
    import ray

    return ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
