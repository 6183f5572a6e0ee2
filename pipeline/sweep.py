"""`aae-pipeline tune`: a search space over one experiment, run as Ray Tune trials, summarised in a sweep directory.

<sweep>/sweep.json      experiment, space, options, metric, mode, status, best trial
<sweep>/base.yaml       the experiment + --set + flags, resolved once; every trial's config is this plus its sample
<sweep>/trials/<id>/    each trial's run directory (config.yaml, metrics.jsonl, checkpoints/)
<sweep>/trials.parquet  one row per trial: id, status, epochs, final and best metric, each searched key
<sweep>/best.yaml       the best trial's resolved config: `aae-pipeline run <sweep>/best.yaml` trains it again
<sweep>/ray/tune/       Ray Tune's own state (what --resume restores)
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from pipeline.config import Config, config_to_yaml, load_config
from pipeline.errors import StageError, UserError, command
from pipeline.progress import console
from pipeline.ray import cluster, nodes, packs, tuner
from pipeline.rundir import CONFIG_FILE, atomic_write_bytes, atomic_write_text, claim_dir, holder, holding, new_run_dir
from pipeline.search_space import (
    SearchSpace,
    check_search_fits,
    check_trial_configs,
    decode_params,
    default_space_path,
    grid_size,
    load_search_space,
    parse_search_space,
)
from pipeline.signals import sigterm_stops_tune
from pipeline.tables import Column, TextTable, number, render

SWEEP_FILE, BASE_FILE, TRIALS_FILE, BEST_FILE = "sweep.json", "base.yaml", "trials.parquet", "best.yaml"
SCHEDULERS = ("asha", "fifo")
DEFAULT_SAMPLES = 8  # draws for random / Optuna search; a grid is walked once


@dataclass
class SweepOptions:
    """How the sweep runs (the tune command's flags)."""

    samples: int | None = None  # None: one pass over a grid, DEFAULT_SAMPLES draws otherwise
    workers_per_trial: int = 1
    scheduler: str = "asha"
    search: str = "random"
    max_concurrent: int | None = None  # None: as many trials as the cores (or the cluster's CPUs) hold
    grace_period: int = 1  # epochs every trial runs before ASHA may stop it
    address: str | None = None
    gpus_per_trial: float | None = None  # a fraction shares one GPU among trials; None: the config's run section
    trials_per_process: int = 1  # trials trained together in one worker process (pipeline.ray.packs)


@dataclass
class SweepResult:
    """What a finished (or interrupted) sweep left: its directory, status, table rows and the best row."""

    path: Path
    status: str  # done | interrupted | failed
    metric: str
    rows: list[dict[str, Any]]
    best: dict[str, Any] | None


def sweep_metric(config: Config) -> str:
    """The number trials are ranked by (lower is better): the same validation metric that ranks a run's
    checkpoints — classification error, cluster error (majority vote on the validation labels), or the
    reconstruction loss for models without a y head."""
    from aae.variants import build_model
    from pipeline.loop import RANKING_METRIC

    return RANKING_METRIC[build_model(config.model.variant, config.model.params).y_head]


def start_sweep(
    experiment: str,
    options: SweepOptions,
    overrides: list[str],
    space_path: Path | None = None,
    epochs: int | None = None,
    sweep_dir: Path | None = None,
) -> SweepResult:
    """Check the space and every sampled config, then run the sweep and write its results."""
    _check_options(options)
    flags = {"train.epochs": epochs, "run.workers": options.workers_per_trial, "run.address": options.address}
    if options.gpus_per_trial is not None:  # shared by the trial's workers
        flags["run.gpus_per_worker"] = options.gpus_per_trial / options.workers_per_trial
    space = load_search_space(space_path or default_space_path(load_config(experiment, overrides, flags)))
    check_search_fits(space, options.search)
    base = check_trial_configs(space, experiment, overrides, flags)
    if options.samples is None:
        options = replace(options, samples=1 if options.search == "grid" else DEFAULT_SAMPLES)
    metric = sweep_metric(base)
    fresh = sweep_dir is None
    path = new_run_dir(base.experiment, Path("sweeps")) if fresh else sweep_dir.resolve()
    _refuse_a_used_dir(path)
    plan, options = _connect(base, options)  # an unreachable or too small cluster fails here, before any file
    with _sweep_dir_held(path, fresh) as path:
        setup = _trial_setup(path, space, plan, metric, options)
        from pipeline.tracking import settle_tracking

        base = settle_tracking(base, path / "trials" / "*", path)  # once, before base.yaml that every trial reads
        _open_sweep_dir(path, base, space, options, metric)
        _check_nodes_see(path, options)

        _fit(tuner.new_tuner(setup, options, metric, base.train.epochs, base.train.seed, base.run.max_failures),
             path, _pack_plan(plan, options))
        return finish_sweep(path)


_IN_USE_FIX = "wait for it to finish, or give this sweep its own --sweep-dir"


def _refuse_a_used_dir(path: Path) -> None:
    """Refuse, before Ray starts, a directory that another process holds or that holds a sweep already (both are
    checked again once this process holds it)."""
    held_by = holder(path)
    if held_by is not None:
        raise UserError(f"{path} is in use by another aae-pipeline process ({held_by})", _IN_USE_FIX)
    _refuse_a_sweep_in(path)


def _refuse_a_sweep_in(path: Path) -> None:
    if (path / SWEEP_FILE).exists():
        raise UserError(f"{path} already holds a sweep", "pick a new --sweep-dir, or continue it with --resume")


@contextmanager
def _sweep_dir_held(path: Path, fresh: bool) -> Iterator[Path]:
    """The sweep directory, created if need be (under a free name if `fresh`) and held by this process while the
    sweep runs: a second sweep into it is refused in one line. A directory made here is removed again if the
    sweep stops before writing sweep.json."""
    if fresh:
        path, created = claim_dir(path), True
    else:
        try:
            path.mkdir(parents=True)
            created = True
        except FileExistsError:
            created = False
    try:
        with holding(path, _IN_USE_FIX):
            _refuse_a_sweep_in(path)  # one may have started here while this process was getting ready
            yield path
    except BaseException:
        if created and not (path / SWEEP_FILE).exists():
            shutil.rmtree(path, ignore_errors=True)
        raise


def _open_sweep_dir(path: Path, base: Config, space: SearchSpace, options: SweepOptions, metric: str) -> None:
    """Write base.yaml and sweep.json, and tell the user what is about to run."""
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path / BASE_FILE, config_to_yaml(base))
    trials = options.samples * grid_size(space, options.search)
    manifest = {
        "experiment": base.experiment, "space": space.to_dict(), "space_file": space.source,
        "options": asdict(options), "metric": metric, "mode": "min", "epochs": base.train.epochs,
        "trials_expected": trials, "status": "running",
    }
    _write_manifest(path, manifest)
    console.print(f"sweep directory: {path}")
    console.print(
        f"{trials} trial(s) of {base.experiment}: {options.search} search, {options.scheduler} scheduler, "
        f"{metric} (lower is better); up to {options.max_concurrent} at once, "
        f"{options.workers_per_trial} worker(s) each"
        + (f", {options.trials_per_process} trials per process" if options.trials_per_process > 1 else "")
    )


def resume_sweep(sweep_dir: Path, address: str | None = None) -> SweepResult:
    """Continue an interrupted sweep with Tune's restore: finished trials stay, the others carry on."""
    path = sweep_dir.resolve()
    manifest = read_sweep_manifest(path)
    with holding(path, "wait for it to finish: that process is running this sweep already"):
        space = parse_search_space(manifest["space"], manifest["space_file"])
        options = SweepOptions(**{**manifest["options"], "address": address or manifest["options"]["address"]})
        base = load_config(str(path / BASE_FILE), [], {"run.address": options.address})
        plan, options = _connect(base, options)
        setup = _trial_setup(path, space, plan, manifest["metric"], options)
        from pipeline.tracking import settle_tracking

        tracking = settle_tracking(base, path / "trials" / "*", path).tracking
        if tracking != base.tracking:  # the trials read base.yaml, so the mode settled now goes there
            settled = load_config(str(path / BASE_FILE), [], {"tracking.wandb": tracking.wandb})
            atomic_write_text(path / BASE_FILE, config_to_yaml(settled))
        _write_manifest(path, {**manifest, "status": "running"})
        _check_nodes_see(path, options)
        console.print(f"resuming sweep {path}")

        _fit(tuner.restore_tuner(setup), path, _pack_plan(plan, options))
        return finish_sweep(path)


def _fit(ray_tuner: Any, path: Path, pack_plan: packs.PackPlan | None) -> None:
    """Run the sweep (with its pack registry, if trials train in packs); an error of Tune itself (not of a trial,
    which Tune records) becomes one line and a log."""
    from ray.tune.error import TuneError

    try:
        with packs.pack_registry(path.name, pack_plan) if pack_plan else nullcontext(), warnings.catch_warnings():
            # ASHA takes percentiles over results that include a diverged trial's inf; numpy warns each time.
            warnings.filterwarnings("ignore", category=RuntimeWarning, module="numpy")
            with sigterm_stops_tune():
                ray_tuner.fit()
    except TuneError as err:
        log_path = path / "logs" / "tune-error.log"
        log_path.parent.mkdir(exist_ok=True)
        atomic_write_text(log_path, "".join(traceback.format_exception(err)))
        _write_manifest(path, {**read_sweep_manifest(path), "status": "failed"})
        cause = str(err).strip().splitlines()[-1] if str(err).strip() else "TuneError"
        raise StageError("tune", RuntimeError(cause), str(log_path)) from None


def read_sweep_manifest(path: Path) -> dict[str, Any]:
    """A sweep directory's sweep.json; a directory without one is a user-facing error."""
    try:
        return json.loads((path / SWEEP_FILE).read_text())
    except FileNotFoundError:
        raise UserError(f"{path} is not a sweep directory (no {SWEEP_FILE})", "pass a directory `tune` made") from None
    except json.JSONDecodeError:
        raise UserError(f"{path / SWEEP_FILE} is not valid JSON", "start the sweep again in a new directory") from None


def _write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    atomic_write_text(path / SWEEP_FILE, json.dumps(manifest, indent=2) + "\n")


def _check_options(options: SweepOptions) -> None:
    if options.scheduler not in SCHEDULERS:
        raise UserError(f"unknown scheduler {options.scheduler!r}", f"choose one of: {', '.join(SCHEDULERS)}")
    for name in ("samples", "workers_per_trial", "max_concurrent", "grace_period", "trials_per_process"):
        value = getattr(options, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1 (got {value})", "pass a positive number")
    if options.trials_per_process > 1 and options.workers_per_trial > 1:
        raise UserError("--trials-per-process trains several trials in one worker process",
                        "pass --workers-per-trial 1 with it, or leave --trials-per-process out")
    if options.gpus_per_trial is not None and options.gpus_per_trial < 0:
        raise UserError(f"--gpus-per-trial must be 0 or more (got {options.gpus_per_trial:g})",
                        "pass a fraction such as 0.25 to run four trials on each GPU, or 0 for CPUs")


def _check_nodes_see(path: Path, options: SweepOptions) -> None:
    """On a cluster, every node must see the sweep directory: trials write their runs under it."""
    if options.address:

        nodes.check_shared(path, "sweep directory")


def _connect(base: Config, options: SweepOptions) -> tuple[cluster.WorkerResources, SweepOptions]:
    """Start or join Ray sized for the concurrent trials; returns one trial's workers (their threads set) and the
    options with the number of concurrent trials filled in. Trials in packs share a worker process:
    --trials-per-process as many trials as processes run at once."""
    wpt, local, per_process = options.workers_per_trial, not options.address, options.trials_per_process
    plan = cluster.plan_resources(wpt, base.run.gpus_per_worker, base.run.cpus_per_worker, local=local)
    cores = os.cpu_count() or 1
    asked = None if options.max_concurrent is None else math.ceil(options.max_concurrent / per_process)
    if local:  # Ray gets logical CPUs for every concurrent trial's workers; threads share the real cores
        processes = asked or max(1, cores // wpt)
        if plan.gpus and not asked:  # as many trials as the GPUs hold (e.g. 4 at 0.25 GPU)
            processes = min(processes, max(1, int(cluster.local_gpus() // (wpt * plan.gpus))))
        cluster.connect(None, replace(plan, workers=wpt * processes))
        threads = max(1, cores // (wpt * processes))
    else:  # a cluster must hold one trial; by default as many run at once as its CPUs hold
        cluster.connect(options.address, plan)
        processes = asked or cluster.trials_that_fit(plan)
        threads = plan.threads
    concurrent = options.max_concurrent or processes * per_process
    return replace(plan, threads=threads), replace(options, max_concurrent=concurrent)


def _pack_plan(plan: cluster.WorkerResources, options: SweepOptions) -> packs.PackPlan | None:
    """How trials share worker processes; None when each trial trains in its own."""
    if options.trials_per_process == 1:
        return None
    assert options.max_concurrent is not None  # filled in by _connect
    return packs.PackPlan(per_pack=options.trials_per_process,
                           packs=math.ceil(options.max_concurrent / options.trials_per_process), worker=plan)


def _trial_setup(path: Path, space: SearchSpace, plan: cluster.WorkerResources, metric: str,
                 options: SweepOptions) -> tuner.TrialSetup:
    return tuner.TrialSetup(
        sweep_dir=str(path), base_config=str(path / BASE_FILE), sweep_name=path.name, space=space, plan=plan,
        metric=metric, trials_per_process=options.trials_per_process,
    )


def finish_sweep(path: Path) -> SweepResult:
    """Collect every trial into trials.parquet and a printed table, write best.yaml, and close sweep.json."""

    manifest = read_sweep_manifest(path)
    space = parse_search_space(manifest["space"], manifest["space_file"])
    metric, epochs = manifest["metric"], manifest["epochs"]
    states = sorted(tuner.trial_states(path), key=lambda state: state["trial_id"])
    rows = [_trial_row(path, state, space, metric, epochs) for state in states]
    best = _best_row(rows)
    if best is not None:
        trial_config = path / "trials" / best["trial_id"] / CONFIG_FILE
        atomic_write_text(path / BEST_FILE, config_to_yaml(load_config(str(trial_config))))
    statuses = {row["status"] for row in rows}
    # Tune creates trials lazily: an interrupted sweep may not have created all of them yet.
    unfinished = "unfinished" in statuses or len(rows) < manifest["trials_expected"]
    status = "interrupted" if unfinished else "failed" if statuses <= {"error"} else "done"
    best_summary = {key: best[key] for key in ("trial_id", "final", "epochs")} if best else None
    _write_manifest(path, {**manifest, "status": status, "best": best_summary})
    _write_parquet(path / TRIALS_FILE, rows)
    console.print(render([trials_table(manifest["experiment"], metric, rows, space, best)]), end="", markup=False)
    _track_summary(path, metric, rows, best)
    if status == "interrupted":
        console.print(f"sweep interrupted; continue it with: {command('aae-pipeline tune --resume', path)}")
    elif status == "failed":
        console.print(f"every trial failed; their errors are under {path / 'ray'}")
    elif best is not None:
        console.print(f"best: trial {best['trial_id']} {metric} {best['final']:.5g}; config: {path / BEST_FILE}")
        console.print(f"train it again with: {command('aae-pipeline run', path / BEST_FILE)}")
    return SweepResult(path=path, status=status, metric=metric, rows=rows, best=best)


def _trial_row(path: Path, state: dict[str, Any], space: SearchSpace, metric: str, epochs: int) -> dict[str, Any]:
    """One trial's line, from its own run directory's metrics (what it really trained) and Tune's status."""

    history = tuner.trial_run_dir(path, state["trial_id"]).read_metrics()
    values = [row[metric] for row in history if metric in row]
    ran = int(history[-1]["epoch"]) if history else 0
    if state["status"] == "TERMINATED":
        status = "completed" if ran >= epochs else "stopped"
    else:
        status = "error" if state["status"] == "ERROR" else "unfinished"
    row = {"trial_id": state["trial_id"], "status": status, "epochs": ran,
           "final": values[-1] if values else None, "best": min(values) if values else None}
    return {**row, **decode_params(space, {key: state["params"].get(key) for key in space.keys})}


def _best_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The lowest final metric among trials that ran every epoch (any trial with a metric if none did)."""
    scored = [row for row in rows if row["final"] is not None]
    completed = [row for row in scored if row["status"] == "completed"] or scored
    return min(completed, key=lambda row: row["final"]) if completed else None


def _write_parquet(target: Path, rows: list[dict[str, Any]]) -> None:
    """trials.parquet; a searched key whose values mix types (or are lists) is stored as JSON text."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {}
    for name in rows[0] if rows else ["trial_id", "status", "epochs", "final", "best"]:
        values = [row[name] for row in rows]
        try:
            columns[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            columns[name] = pa.array([json.dumps(value) for value in values])
    buffer = io.BytesIO()
    pq.write_table(pa.table(columns), buffer)
    atomic_write_bytes(target, buffer.getvalue())


def trials_table(experiment: str, metric: str, rows: list[dict[str, Any]], space: SearchSpace,
                 best: dict[str, Any] | None) -> TextTable:
    """The sweep's results, the best trial marked with *; the best-epoch column is optional (a narrow terminal
    leaves it out)."""
    names = _short_names(space.keys)
    columns = [Column("trial"), *(Column(names[key], right=True) for key in space.keys), Column("epochs", right=True),
               Column("final", right=True), Column("status"), Column("best", right=True, optional=True)]
    table = TextTable(f"{experiment} sweep: {metric} at the last and the best epoch (lower is better)", columns)
    for row in rows:
        table.rows.append([("* " if row is best else "") + row["trial_id"], *(number(row[key]) for key in space.keys),
                           str(row["epochs"]), number(row["final"]), row["status"], number(row["best"])])
    return table


def _short_names(keys: list[str]) -> dict[str, str]:
    """Column headers for searched keys: the last part of each (model.params.z_dim: z_dim), more where two would
    read the same (lr.reconstruction and momentum.reconstruction)."""
    names = {key: key.rsplit(".", 1)[-1] for key in keys}
    for key in keys:
        if list(names.values()).count(names[key]) > 1:
            names[key] = ".".join(key.split(".")[-2:])
    return names


def _track_summary(path: Path, metric: str, rows: list[dict[str, Any]], best: dict[str, Any] | None) -> None:
    """The sweep's table and best value as one W&B run (job type tune-summary) beside the trials' runs."""
    from pipeline.rundir import RunDir
    from pipeline.tracking import make_tracker, recorded_errors

    tracker = make_tracker(load_config(str(path / BASE_FILE)), RunDir(path), "tune-summary",
                           name=f"{path.name}-summary", group=path.name)
    try:
        if rows:
            columns = list(rows[0])
            tracker.log_table("trials", columns, [[_plain(row[c]) for c in columns] for row in rows])
        if best is not None:
            tracker.log_summary({f"best/{metric}": best["final"], "trials": len(rows)})
    finally:
        tracker.finish()
    # The trials tracked from Ray workers, whose warnings never reach this terminal: said once here.
    failed = [error for trial in sorted(path.glob("trials/*")) for error in recorded_errors(trial).values()]
    if failed:
        console.print(f"warning: W&B tracking failed in {len(failed)} trial run(s) (first: {failed[0]}); "
                      "training and results are unaffected")


def _plain(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, list | dict) else value
