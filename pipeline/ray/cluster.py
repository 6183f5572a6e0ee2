"""Connecting to Ray: a quiet local cluster sized for the run, or an existing one, checked for resources."""

from __future__ import annotations

import logging
import os
import socket
import warnings
from dataclasses import dataclass

from pipeline.errors import UserError


@dataclass(frozen=True)
class WorkerResources:
    """What each training worker asks Ray for, and how many torch threads it runs."""

    workers: int
    cpus: float
    gpus: float
    threads: int


def quiet_ray_environment() -> None:
    """Keep Ray's controller chatter and progress tables out of the user's terminal (errors still show)."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    warnings.filterwarnings("ignore", module="ray")
    for name in ("ray", "ray.train", "ray.tune", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)


def plan_resources(workers: int, gpus_per_worker: float, cpus_per_worker: float | None, local: bool) -> WorkerResources:
    """Per-worker CPU/GPU request and thread count; locally the cores are shared out among the workers."""
    cores = os.cpu_count() or 1
    if cpus_per_worker is None:
        # Locally Ray is told there are at least `workers` logical CPUs, so one each always fits; threads
        # are what actually shares the physical cores.
        cpus_per_worker = 1.0
    threads = max(1, cores // workers) if local else max(1, int(cpus_per_worker))
    return WorkerResources(workers=workers, cpus=cpus_per_worker, gpus=gpus_per_worker, threads=threads)


def connect(address: str | None, plan: WorkerResources, extra_cpus: float = 0.0) -> None:
    """Start a local Ray sized for the plan, or join the cluster at `address`; fail fast if it cannot fit."""
    import ray

    quiet_ray_environment()
    if ray.is_initialized():
        check_capacity(plan, extra_cpus)
        return
    common = {"logging_level": logging.ERROR, "log_to_driver": False, "configure_logging": True}
    if address:
        _probe(address)
        try:
            ray.init(address=address, **common)
        except Exception as err:  # Ray raises ConnectionError, RuntimeError or its own types here
            raise UserError(
                f"cannot reach the Ray cluster at {address} ({type(err).__name__}: {str(err).splitlines()[0][:160]})",
                "start the cluster (docker compose up) or check --address host:port",
            ) from None
    else:
        needed = plan.workers * plan.cpus + extra_cpus
        gpus = _local_gpus()
        ray.init(
            num_cpus=max(os.cpu_count() or 1, int(-(-needed // 1))),
            num_gpus=gpus,
            include_dashboard=False,
            **common,
        )
    check_capacity(plan, extra_cpus)


def _probe(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds on a closed or unreachable head: ray.init would retry for minutes before giving up."""
    target = address.removeprefix("ray://")
    if target == "auto":
        return
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address {address!r} is not host:port", "write it like 127.0.0.1:6379")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise UserError(
            f"cannot reach the Ray cluster at {address} ({err.strerror or err})",
            "start the cluster (docker compose up) or check --address host:port",
        ) from None


def _local_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_capacity(plan: WorkerResources, extra_cpus: float = 0.0) -> None:
    """Refuse a run the cluster can never schedule, instead of letting it wait forever."""
    import ray

    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 0.0), total.get("GPU", 0.0)
    need_cpus = plan.workers * plan.cpus + extra_cpus
    need_gpus = plan.workers * plan.gpus
    if need_gpus > gpus:
        raise UserError(
            f"this run asks for {plan.workers} workers x {plan.gpus:g} GPU but the Ray cluster has {gpus:g} GPUs",
            "use --gpus-per-worker 0 to train on CPUs, fewer --workers, or a cluster with GPU nodes",
        )
    if need_cpus > cpus:
        raise UserError(
            f"this run asks for {need_cpus:g} CPUs ({plan.workers} workers x {plan.cpus:g}) but the Ray cluster has "
            f"{cpus:g}",
            "use fewer --workers, lower run.cpus_per_worker, or add worker nodes",
        )


def shutdown() -> None:
    """Stop the local Ray (a no-op when none is running)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
