"""Connecting to Ray: a quiet local cluster sized for the run, or an existing one, checked for resources."""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import shutil
import socket
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import UserError
from pipeline.ray.internals import listen_on_loopback_only, send_token_if_available
from pipeline.signals import sigterm_kept


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
    os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # Ray's "(raylet) …" notices, uncoloured in logs and pipes
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


def connect(address: str | None, plan: WorkerResources) -> None:
    """Start a private local Ray sized for the plan, or join the cluster at `address`; fail fast if it cannot fit."""
    import ray

    quiet_ray_environment()
    if ray.is_initialized():
        check_capacity(plan)
        return
    if address:
        _join(address)
    else:
        check_local_fit(plan)
        _start_local(plan)
    check_capacity(plan)


def _start_local(plan: WorkerResources) -> None:
    """A private Ray instance for this process, listening on loopback only; a failed start is one line."""
    import ray

    needed = plan.workers * plan.cpus
    listen_on_loopback_only()
    # Ray Train watches for nodes a cluster drains (spot preemption) with one more actor process per run; a
    # private one-node Ray has none to drain, and on a small machine that process is start-up time.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    try:
        # address="local": always a private instance. Without it ray.init joins whatever cluster
        # /tmp/ray/ray_current_cluster names (even a dead one, whose stale record then breaks every run).
        with sigterm_kept():
            ray.init(
                address="local",
                num_cpus=max(os.cpu_count() or 1, int(-(-needed // 1))),
                num_gpus=local_gpus(),
                include_dashboard=False,
                **_INIT_OPTIONS,
            )
    except Exception as err:  # Ray raises RuntimeError, ConnectionError, its own types…
        raise start_failure(err) from None


# Below this much free space where Ray keeps its session (logs, sockets, spilled objects), it may fail to start.
RAY_MIN_FREE_BYTES = 1 << 30


def start_failure(err: BaseException) -> UserError:
    """One line for a local Ray that did not start: the lack of room that likely caused it, or Ray's own reason."""
    temp_root = Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir())
    problems = []
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY:
        problems.append(f"files are limited to {soft / 2**20:.0f} MB by `ulimit -f`")
    for where in (temp_root, Path("/dev/shm")):
        try:
            free = shutil.disk_usage(where).free
        except OSError:
            continue
        if free < RAY_MIN_FREE_BYTES:
            problems.append(f"only {free / 2**20:.0f} MB free in {where}")
    if problems:
        return UserError(
            f"Ray could not start on this machine: {'; '.join(problems)}",
            "free disk space (or lift the limit) and run the same command again; RAY_TMPDIR=<dir> puts Ray's "
            "session files on another disk",
        )
    reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
    return UserError(
        f"Ray could not start on this machine ({type(err).__name__}: {reason})",
        f"check free disk space and memory, then run the same command again; Ray's logs are in "
        f"{temp_root / 'ray' / 'session_latest' / 'logs'}",
    )


_INIT_OPTIONS = {"logging_level": logging.ERROR, "log_to_driver": False, "configure_logging": True}
_UNREACHABLE_FIX = "start the cluster (`ray start --head`, or docker compose up) or check --address host:port"


def _join(address: str) -> None:
    """Join the cluster at `address`, sending this machine's Ray token when there is one."""
    import ray

    _probe(address)
    token_sent = send_token_if_available()
    with _stderr_captured() as captured, sigterm_kept():
        try:
            ray.init(address=address, **_INIT_OPTIONS)
            return
        except Exception as err:  # Ray raises ConnectionError, RuntimeError or its own types here
            reason = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
    # Ray's C++ client says why on stderr (captured above), not in the exception.
    if "Unauthenticated" in captured.text or "InvalidAuthToken" in captured.text:
        raise UserError(
            f"the Ray cluster at {address} refused this client's authentication token"
            if token_sent else f"the Ray cluster at {address} requires token authentication and no token was found",
            "give this process the cluster's token: RAY_AUTH_MODE=token with RAY_AUTH_TOKEN=<token> or "
            "RAY_AUTH_TOKEN_PATH=<file> (on the head machine `ray get-auth-token` prints it)",
        )
    raise UserError(f"cannot reach the Ray cluster at {address} ({reason})", _UNREACHABLE_FIX)


class _Captured:
    text = ""


@contextlib.contextmanager
def _stderr_captured() -> Iterator[_Captured]:
    """Collect what native code writes to file descriptor 2 during the block (Ray's C++ client retries loudly)."""
    captured = _Captured()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.text = sink.read().decode(errors="replace")


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
            f"cannot reach the Ray cluster at {address} ({err.strerror or err})", _UNREACHABLE_FIX,
        ) from None


# More workers than this per core only add processes that take turns on the same cores (and memory each).
MAX_LOCAL_WORKERS_PER_CORE = 4
# What one local training worker holds: torch, the Ray worker and MNIST as floats (measured: 1.35 GiB RSS).
WORKER_MEMORY_BYTES = 3 << 29  # 1.5 GiB


def check_local_fit(plan: WorkerResources) -> None:
    """Refuse, before any worker starts, a local run that asks for more workers than this machine can hold."""
    cores = os.cpu_count() or 1
    limit = MAX_LOCAL_WORKERS_PER_CORE * cores
    if plan.workers > limit:
        raise UserError(
            f"{plan.workers} workers on this machine's {cores} cores is more than the {limit} a local run allows "
            f"({MAX_LOCAL_WORKERS_PER_CORE} per core)",
            f"use --workers {min(limit, 2 * cores)} or fewer, or join a larger Ray cluster with --address",
        )
    available = _available_memory()
    if available is not None and plan.workers * WORKER_MEMORY_BYTES > available:
        fit = max(1, available // WORKER_MEMORY_BYTES)
        raise UserError(
            f"{plan.workers} workers need about {plan.workers * WORKER_MEMORY_BYTES / 2**30:.0f} GiB of memory "
            f"(about {WORKER_MEMORY_BYTES / 2**30:g} GiB each) but this machine has "
            f"{available / 2**30:.1f} GiB available",
            f"use --workers {fit} or fewer, or join a larger Ray cluster with --address",
        )


def _available_memory() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), in bytes; None where it cannot be read."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def local_gpus() -> int:
    """The CUDA devices this machine has (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_capacity(plan: WorkerResources) -> None:
    """Refuse a run the cluster can never schedule, instead of letting it wait forever."""
    import ray

    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 0.0), total.get("GPU", 0.0)
    need_cpus = plan.workers * plan.cpus
    need_gpus = plan.workers * plan.gpus
    if need_gpus > gpus:
        raise UserError(
            f"this run asks for {plan.workers} workers x {plan.gpus:g} GPU but the Ray cluster has {gpus:g} GPUs",
            "use --gpus-per-worker 0 (tune: --gpus-per-trial 0) to train on CPUs, fewer --workers, or a cluster "
            "with GPU nodes",
        )
    if need_cpus > cpus:
        raise UserError(
            f"this run asks for {need_cpus:g} CPUs ({plan.workers} workers x {plan.cpus:g}) but the Ray cluster has "
            f"{cpus:g}",
            "use fewer --workers, lower run.cpus_per_worker, or add worker nodes",
        )


def trials_that_fit(plan: WorkerResources) -> int:
    """How many trials of `plan` workers the connected cluster holds at once."""
    import ray

    total = ray.cluster_resources()
    per_trial_cpus = plan.workers * plan.cpus
    fits = int(total.get("CPU", 0.0) // per_trial_cpus) if per_trial_cpus else 1
    if plan.gpus:
        fits = min(fits, int(total.get("GPU", 0.0) // (plan.workers * plan.gpus)))
    return max(1, fits)


def shutdown() -> None:
    """Stop the local Ray (a no-op when none is running)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
