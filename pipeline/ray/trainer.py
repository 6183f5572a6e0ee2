"""The Ray Train runner: a TorchTrainer whose workers run pipeline.loop.train_loop on their shard."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from ray.train import ControllerError, TrainingFailedError

from pipeline.config import Config
from pipeline.errors import UserError
from pipeline.ray.cluster import WorkerResources, plan_resources
from pipeline.ray.internals import loopback_torch_config, session_dir
from pipeline.ray.nodes import record_worker
from pipeline.rundir import RunDir, atomic_write_text
from pipeline.tracking import NullTracker, Tracker, dataset_artifact, make_tracker

PLACEMENT_GROUP_FILE = "ray/placement-group.txt"  # the workers' placement group, written by rank 0


def worker_plan(config: Config) -> WorkerResources:
    """What each training worker of `config` asks Ray for, and its torch threads."""
    return plan_resources(
        config.run.workers, config.run.gpus_per_worker, config.run.cpus_per_worker, local=not config.run.address
    )


def train_worker(loop_config: dict[str, Any]) -> None:
    """What each Ray Train worker runs: set threads and device, then the plain training loop."""
    import ray.train
    import torch

    from pipeline.loop import WorkerContext, train_loop

    torch.set_num_threads(loop_config["threads"])
    context = ray.train.get_context()
    device = torch.device("cpu")
    if loop_config["use_gpu"]:
        import ray.train.torch

        device = ray.train.torch.get_device()
    worker = WorkerContext(rank=context.get_world_rank(), world=context.get_world_size(), device=device)
    config: Config = loop_config["config"]  # validated by the driver; pickled whole, not re-read from a dict
    run = RunDir(Path(loop_config["run_dir"]))
    record_worker(run, worker.rank)
    if worker.rank == 0:
        record_placement_group(run)
    # Only rank 0 tracks (Ray's setup_wandb(rank_zero_only=True) misbehaves under Train V2); others get a no-op.
    tracker = start_train_tracking(config, run) if worker.rank == 0 else NullTracker()

    def report(metrics: dict[str, float]) -> None:
        tracker.log_metrics(metrics, step=int(metrics["epoch"]))  # numbers only: images never go through Ray
        if loop_config["report_to_tune"]:  # a sweep's scheduler reads these; `run` reads metrics.jsonl
            ray.train.report(metrics)

    try:
        train_loop(config, run, worker, report=report)
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
    backend = "nccl" if use_gpu else "gloo"
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={
            "config": config,
            "run_dir": str(run.path.resolve()),  # the same path on every node (a shared mount)
            "threads": plan.threads,
            "use_gpu": use_gpu,
            "report_to_tune": bool(callbacks),
        },
        scaling_config=ScalingConfig(num_workers=plan.workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=name,
            storage_path=str(run.path / "ray"),
            callbacks=callbacks,
            failure_config=FailureConfig(max_failures=config.run.max_failures),
        ),
        # A local run's workers host their rendezvous on loopback, as its Ray listens (pipeline.ray.internals).
        torch_config=TorchConfig(backend=backend) if config.run.address else loopback_torch_config(backend),
    )
    started = time.time()
    try:
        _fit_interruptibly(trainer)
    except ControllerError as err:
        # Ray's message puts the controller's own error on a second line, which a one-line report drops.
        raise ControllerFailed(err.controller_failure, controller_log_errors(since=started)) from err
    except TrainingFailedError as err:
        cause = worker_cause(err)
        if isinstance(cause, UserError):
            raise cause from None  # e.g. corrupt data found by a worker: one line, exit 2, like the driver's own
        if cause is not None:
            raise WorkerFailed(cause) from err
        raise


def _fit_interruptibly(trainer: Any) -> None:
    """trainer.fit() in a helper thread, so that Ctrl-C reaches this process as KeyboardInterrupt.

    In the main thread Ray Train installs its own SIGINT handler, which ends the process with SystemExit and
    stays installed afterwards; off the main thread it leaves signals alone (as it does under Tune). On
    Ctrl-C the driver exits and Ray ends the workers it owns; the checkpoints on disk are what a resume uses."""
    outcome: dict[str, BaseException] = {}

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as err:  # handed to the waiting thread, which re-raises it
            outcome["error"] = err

    thread = threading.Thread(target=fit, name="ray-train-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(timeout=0.5)
    if "error" in outcome:
        raise outcome["error"]


def record_placement_group(run: RunDir) -> None:
    """Note the worker group's placement group in the run directory, for `release_placement_group`."""
    import ray
    from ray.util import get_current_placement_group

    if not ray.is_initialized():  # Ray's lookup would start a Ray of its own here
        return
    group = get_current_placement_group()
    if group is not None:
        atomic_write_text(run.path / PLACEMENT_GROUP_FILE, group.id.hex())


def release_placement_group(run: RunDir) -> bool:
    """Remove the placement group a trainer in `run` left behind; True if there was one to remove.

    Workaround (Ray 2.60, Train V2): when Tune stops a trial that drives a TorchTrainer (finished, stopped
    early by ASHA, failed), it kills the trial's process before the trainer's controller removes its
    placement group. Train's own cleaner actor cannot tell the controller died without the dashboard's state
    API, so the group stays, holding its CPUs, and the next trial waits for them forever."""
    import ray
    from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

    path = run.path / PLACEMENT_GROUP_FILE
    try:
        group_id = path.read_text().strip()
    except OSError:
        return False
    group = PlacementGroup(ray.PlacementGroupID.from_hex(group_id))
    if placement_group_table(group).get("state") in (None, "REMOVED"):
        return False
    remove_placement_group(group)
    return True


class WorkerFailed(RuntimeError):
    """A training worker raised: carries the worker's own exception, so its first line reaches the terminal."""

    def __init__(self, cause: BaseException) -> None:
        self.cause = cause
        super().__init__(f"a training worker failed: {type(cause).__name__}: {_first_line(cause)}")


class ControllerFailed(RuntimeError):
    """Ray Train's controller (not the training code) failed: its own error first, then the errors it logged."""

    def __init__(self, cause: BaseException, controller_log: str = "") -> None:
        self.cause = cause
        super().__init__(
            f"Ray Train's controller failed: {type(cause).__name__}: {_first_line(cause) or repr(cause)}"
            + (f"\n\nErrors in the controller's log:\n{controller_log}" if controller_log else "")
        )


def controller_log_errors(since: float = 0.0, limit: int = 20_000) -> str:
    """The warnings and errors (with their tracebacks) in this Ray session's Train controller logs on this node,
    of the controllers that wrote after `since` (a time.time(); each fit starts a controller with its own log).

    Where the controller's exception is the only clue (it crosses the actor boundary without its traceback),
    the log it wrote is kept beside it in the run's error log. Best effort: '' where nothing can be read."""
    session = session_dir()
    if session is None:
        return ""
    lines = []
    for path in sorted(session.glob("logs/train/ray-train-sys-controller-*.log")):
        try:
            if path.stat().st_mtime < since:
                continue
            records = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for text in records:
            try:
                record = json.loads(text)
            except ValueError:
                continue
            if record.get("levelname") in ("WARNING", "ERROR", "CRITICAL"):
                lines.append(f"{record.get('asctime', '')} {record['levelname']} {record.get('message', '')}")
                if record.get("exc_text"):
                    lines.append(record["exc_text"])
    return "\n".join(lines)[-limit:]


def worker_cause(err: BaseException) -> BaseException | None:
    """The exception a worker raised, unwrapped from Ray Train's WorkerGroupError and Ray's task-error wrapper."""
    failures = getattr(err, "worker_failures", None) or {}
    if not failures:
        return None
    cause = failures[min(failures)]
    while getattr(cause, "cause", None) is not None and cause.cause is not cause:  # RayTaskError.cause
        cause = cause.cause
    return cause


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0][:300]
