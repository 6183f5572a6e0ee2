"""The Ray Tune runner of `aae-pipeline tune`: Tune samples, schedules and records; each trial runs the same
pipeline.loop.train_loop as `aae-pipeline run`, in the trial's own process (one worker) or through a TorchTrainer
named after the trial (several workers). The sweep's logic (spaces, metric, results) lives in pipeline/sweep.py."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune import Callback

from pipeline.progress import console
from pipeline.ray import trainer
from pipeline.ray.cluster import WorkerResources
from pipeline.ray.nodes import record_worker
from pipeline.ray.packs import PackReleaser
from pipeline.rundir import CONFIG_FILE, DIVERGED, RunDir, atomic_write_text
from pipeline.search_space import SearchSpace, decode_params, encoded_values

# A trial that only drives a TorchTrainer or a pack holds no CPU: its workers ask for theirs. Asking for even a
# sliver of one deadlocks a 2-core machine (the trial holds the CPU its own workers wait for) and keeps a 4-CPU
# cluster to one 2-worker trial at a time. Tune refuses an empty request, hence one byte of memory.
TRIAL_RESOURCES_TRAINING_ELSEWHERE = {"CPU": 0, "memory": 1}
TUNE_NAME = "tune"  # Tune's experiment folder inside <sweep>/ray/


@dataclass(frozen=True)
class TrialSetup:
    """What every trial needs besides its sampled parameters (pickled into each trial process)."""

    sweep_dir: str
    base_config: str  # the sweep's base.yaml: experiment + --set + flags, resolved once
    sweep_name: str
    space: SearchSpace
    plan: WorkerResources  # the workers of one trial (one: the trial's own process) and their torch threads
    metric: str  # what trials are ranked by
    trials_per_process: int = 1  # more than 1: trials train in packs (pipeline.ray.packs), each pack one worker


def trial_run_dir(sweep_dir: Path, trial_id: str) -> RunDir:
    """The trial's own run directory; stable per trial, so a restored trial resumes from its checkpoints."""
    return RunDir(Path(sweep_dir) / "trials" / trial_id)


def run_trial(params: dict[str, Any], setup: TrialSetup) -> None:
    """One trial: resolve its config, then train in this process or on a TorchTrainer, reporting every epoch."""
    from ray import tune

    from pipeline.config import config_to_yaml, load_config

    trial_id = tune.get_context().get_trial_id()
    config = load_config(setup.base_config, [], decode_params(setup.space, params))
    run = trial_run_dir(Path(setup.sweep_dir), trial_id)
    run.path.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run.path / CONFIG_FILE, config_to_yaml(config))
    if setup.trials_per_process > 1:
        _train_in_pack(config, run, setup, trial_id)
    elif setup.plan.workers > 1:
        from ray.tune.integration.ray_train import TuneReportCallback

        # The trainer's rank 0 tracks this trial itself (W&B job type "train", grouped by the trial's run dir).
        trainer.fit(config, run, setup.plan, name=trial_id, callbacks=[TuneReportCallback()])
    else:
        _train_in_process(config, run, setup, trial_id)
    diverged = run.divergence()
    if diverged is not None:
        # Training stopped on NaN losses, maybe before any epoch was reported; Tune needs the metric once,
        # and a diverged trial ranks last.
        tune.report({setup.metric: float("inf"), "epoch": diverged[DIVERGED], "diverged": 1})


def _train_in_process(config: Any, run: RunDir, setup: TrialSetup, trial_id: str) -> None:
    """One worker: the plain training loop right here, sparing the TorchTrainer's start-up."""
    import torch

    from pipeline.loop import WorkerContext, train_loop

    torch.set_num_threads(setup.plan.threads)
    record_worker(run, 0)  # the trial's process is its only worker
    device = torch.device("cuda" if setup.plan.gpus > 0 else "cpu")
    with _trial_reporter(config, run, setup, trial_id) as report:
        train_loop(config, run, WorkerContext(device=device), report=report)


def _train_in_pack(config: Any, run: RunDir, setup: TrialSetup, trial_id: str) -> None:
    """Train in one of the sweep's packs (another process), reporting each epoch it trains for this trial."""
    from pipeline.ray.packs import train_in_pack

    with _trial_reporter(config, run, setup, trial_id) as report:
        for metrics in train_in_pack(trial_id, config, run, setup.sweep_name):
            report(metrics)


@contextmanager
def _trial_reporter(config: Any, run: RunDir, setup: TrialSetup, trial_id: str) -> Iterator[Any]:
    """What a trial does with each epoch's metrics: track them (W&B job type "tune-trial") and report them to
    Tune."""
    from ray import tune

    from pipeline.tracking import make_tracker

    tracker = make_tracker(config, run, "tune-trial", name=f"{setup.sweep_name}-{trial_id}", group=setup.sweep_name)

    def report(metrics: dict[str, float]) -> None:
        tracker.log_metrics(metrics, step=int(metrics["epoch"]))
        tune.report(metrics)

    try:
        yield report
    finally:
        tracker.finish()


def trainable(setup: TrialSetup) -> Any:
    """The trial function with its resource request: a whole worker in-process, a sliver when a trainer runs."""
    from ray import tune

    def aae_trial(params: dict[str, Any]) -> None:
        run_trial(params, setup)

    if setup.plan.workers > 1 or setup.trials_per_process > 1:
        resources = TRIAL_RESOURCES_TRAINING_ELSEWHERE
    else:
        resources = {"CPU": setup.plan.cpus, **({"GPU": setup.plan.gpus} if setup.plan.gpus else {})}
    return tune.with_resources(aae_trial, resources)


def param_space(space: SearchSpace, search: str) -> dict[str, Any]:
    """The space as Tune domains; under --search grid the choices are enumerated like grids."""
    from ray import tune

    domains: dict[str, Any] = {}
    for item in space.ranges:
        if item.kind == "grid" or (item.kind == "choice" and search == "grid"):
            domains[item.key] = tune.grid_search(encoded_values(item))
        elif item.kind == "choice":
            domains[item.key] = tune.choice(encoded_values(item))
        else:
            domains[item.key] = getattr(tune, item.kind)(*item.values)
    return domains


def make_scheduler(kind: str, epochs: int, grace_period: int) -> Any:
    """ASHA on the epoch count (so a restored trial keeps its place), or plain FIFO."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if kind == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(time_attr="epoch", max_t=epochs, grace_period=min(grace_period, epochs), reduction_factor=2)


def make_searcher(kind: str, seed: int, max_concurrent: int) -> Any:
    """Optuna's TPE, or Tune's basic generator (grids crossed, other ranges drawn at random), seeded."""
    if kind == "optuna":
        import optuna
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # its per-study INFO lines would interleave ours
        return ConcurrencyLimiter(OptunaSearch(seed=seed), max_concurrent=max_concurrent)
    from ray.tune.search.basic_variant import BasicVariantGenerator

    # Tune ignores TuneConfig.max_concurrent_trials for a generator passed in: it takes its own limit.
    return BasicVariantGenerator(max_concurrent=max_concurrent, random_state=seed)


def new_tuner(setup: TrialSetup, options: Any, metric: str, epochs: int, seed: int, max_failures: int) -> Any:
    """A Tuner over the trial function; Tune's own state lands in <sweep>/ray/tune.

    A trial whose process dies (its node lost, say) is started again up to `max_failures` times, on any node;
    it resumes from the checkpoints in its run directory."""
    from ray import tune

    callbacks = [TrialPrinter(metric, epochs, setup.space), PlacementGroupReleaser(setup.sweep_dir)]
    if setup.trials_per_process > 1:
        callbacks.append(PackReleaser(setup.sweep_name))
    return tune.Tuner(
        trainable(setup),
        param_space=param_space(setup.space, options.search),
        tune_config=tune.TuneConfig(
            metric=metric,
            mode="min",
            scheduler=make_scheduler(options.scheduler, epochs, options.grace_period),
            search_alg=make_searcher(options.search, seed, options.max_concurrent),
            num_samples=options.samples,
            # In-process trials share a process, importing torch and the pipeline once rather than per trial;
            # a trial that drove a TorchTrainer cannot be reset in time, so those get a fresh process each.
            reuse_actors=setup.plan.workers == 1,
            trial_dirname_creator=lambda trial: trial.trial_id,
        ),
        run_config=tune.RunConfig(
            name=TUNE_NAME, storage_path=str(Path(setup.sweep_dir) / "ray"), verbose=0, callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=max_failures),
        ),
    )


def restore_tuner(setup: TrialSetup) -> Any:
    """Tune's restore of an interrupted sweep: finished trials stay, unfinished and errored ones continue.

    Tune's state is pickled, so only sweep directories the user made themselves should be resumed."""
    from ray import tune

    return tune.Tuner.restore(
        str(Path(setup.sweep_dir) / "ray" / TUNE_NAME),
        trainable=trainable(setup),
        resume_unfinished=True,
        resume_errored=True,  # their run directories hold checkpoints, so they continue rather than restart
    )


def trial_states(sweep_dir: Path) -> list[dict[str, Any]]:
    """Each trial Tune knows of: id, Tune status, sampled parameters (encoded) and error, in creation order."""
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(str(Path(sweep_dir) / "ray" / TUNE_NAME))
    return [
        {"trial_id": t.trial_id, "status": t.status, "params": dict(t.config), "error": t.error_file}
        for t in analysis.trials
    ]


class PlacementGroupReleaser(Callback):
    """Frees the workers' placement group of every trial Tune ends, so the next trial can be placed.

    See trainer.release_placement_group: without this a sweep of multi-worker trials on a cluster hangs after
    its first trial."""

    def __init__(self, sweep_dir: str) -> None:
        self.sweep_dir = Path(sweep_dir)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        trainer.release_placement_group(trial_run_dir(self.sweep_dir, trial.trial_id))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        trainer.release_placement_group(trial_run_dir(self.sweep_dir, trial.trial_id))


class TrialPrinter(Callback):
    """One line per finished, stopped or failed trial, instead of Tune's progress tables."""

    def __init__(self, metric: str, epochs: int, space: SearchSpace) -> None:
        self.metric, self.epochs, self.space = metric, epochs, space

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        done = int(result.get("epoch", 0))
        how = "finished" if done >= self.epochs else f"stopped early after epoch {done}"
        if result.get("diverged"):
            how = f"diverged (NaN/inf losses) in epoch {done}"
        value = result.get(self.metric)
        shown = f"{value:.5g}" if isinstance(value, float) else "-"
        console.print(f"trial {trial.trial_id} {how}: {self.metric} {shown}  ({self._params(trial)})")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        console.print(f"trial {trial.trial_id} [red]failed[/red] ({self._params(trial)}); see {trial.error_file}")

    def _params(self, trial: Any) -> str:
        params = decode_params(self.space, dict(trial.config))
        return ", ".join(f"{key}={value}" for key, value in params.items())
