"""`aae-pipeline run` and `eval`: resolve the config, find or lay out the run directory, chain the stages.

The durable record is the run directory's manifest.json: every stage's status, seconds, outputs and input
hash. A re-run of the same command finds the earlier run directory by its run key and skips every stage
whose inputs are unchanged.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.checkpoints import check_for_evaluation, check_for_training, latest_epoch
from pipeline.config import Config, config_changes, config_to_yaml, flat_config, load_config
from pipeline.errors import Interrupted, StageError, UserError, command
from pipeline.progress import console, log_to, summary_table
from pipeline.rundir import CONFIG_FILE, RunDir, atomic_write_text, driving, new_run_dir, sha256_file
from pipeline.signals import INTERRUPTED_EXIT, TERMINATED_EXIT, Terminated
from pipeline.stages import EVALUATION_FILE, FIGURE_DIR, StageFn
from pipeline.tracking import settle_tracking

RUNS_ROOT = Path("runs")
LOG_FILE = "run.log"  # everything the run printed, without colours
# Sections that change no trained result: a run that differs only in these reuses the earlier run directory.
_NOT_IN_RUN_KEY = ("description", "tracking", "evaluate")


@dataclass(frozen=True)
class Stage:
    """One step of the chain: its function, the config sections and files it depends on, where it runs."""

    name: str
    # "module:function", a (Config, RunDir) -> dict, imported when the stage runs: `run` then answers a mistake,
    # a busy run directory or a chain with nothing to redo without loading torch, matplotlib and Ray Train.
    function: str
    config_keys: tuple[str, ...]  # top-level config sections (or section.key) the stage reads
    input_files: Callable[[RunDir], list[Path]]  # files from earlier stages it reads
    as_task: bool = True  # a Ray task; `train` instead drives a TorchTrainer from the driver

    def load(self) -> StageFn:
        """The stage's function."""
        module, _, name = self.function.partition(":")
        return getattr(importlib.import_module(module), name)


def _dataset_manifest(run: RunDir) -> list[Path]:
    outputs = run.read_manifest().get("stages", {}).get("prepare", {}).get("outputs", {})
    return [Path(outputs["dataset_dir"]) / "manifest.json"] if "dataset_dir" in outputs else []


def _trained(run: RunDir) -> list[Path]:
    return [run.best_checkpoint, run.metrics_path]


def _evaluated(run: RunDir) -> list[Path]:
    return [run.path / EVALUATION_FILE, *sorted((run.path / FIGURE_DIR).glob("*.png"))]


# The chain, in order. A stage is skipped on a re-run when its recorded input hash matches: the hash covers the
# config keys it reads and the files earlier stages produced for it, so changing either redoes it and every
# stage after.
STAGES: tuple[Stage, ...] = (
    Stage("prepare", "pipeline.stages.prepare:prepare", ("data",), lambda run: []),
    Stage("train", "pipeline.stages.train:train",
          ("data", "model", "train", "run.workers", "run.gpus_per_worker", "run.amp"), _dataset_manifest,
          as_task=False),
    Stage("evaluate", "pipeline.stages.evaluate:evaluate", ("data", "model", "evaluate"),
          lambda run: [run.best_checkpoint]),
    Stage("visualize", "pipeline.stages.visualize:visualize", ("data", "model"), _trained),
    Stage("track", "pipeline.stages.track:track", ("tracking",), lambda run: [*_trained(run), *_evaluated(run)]),
)
STAGE_NAMES = tuple(stage.name for stage in STAGES)


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


def run_key(config: Config) -> str:
    """Identity of a run: the hash of every config key that can change what training produces."""
    dumped = config.model_dump(mode="json")
    for key in _NOT_IN_RUN_KEY:
        dumped.pop(key, None)
    dumped["run"].pop("address", None)
    return hashlib.sha256(json.dumps(dumped, sort_keys=True).encode()).hexdigest()[:16]


def resolve_run(
    experiment: str | None, overrides: list[str], flags: dict[str, Any], run_dir: Path | None, resume: Path | None
) -> tuple[Config, RunDir]:
    """The validated config and its run directory: resumed, reused (same run key), or new."""
    if resume is not None:
        return _resume(resume, overrides, flags)
    if experiment is None:
        raise UserError("no experiment given", "name one (see `aae-pipeline experiments`) or pass --resume RUN_DIR")
    config = load_config(experiment, overrides, flags)
    if run_dir is not None:
        existing = RunDir(run_dir)
        if (run_dir / CONFIG_FILE).exists() and existing.read_manifest().get("run_key") != run_key(config):
            raise UserError(
                f"{run_dir} holds a run with a different config", "pick a new --run-dir, or continue it with --resume"
            )
        return config, existing
    previous = find_previous_run(config)
    return config, previous or RunDir(new_run_dir(config.experiment, RUNS_ROOT), fresh=True)


def find_previous_run(config: Config, root: Path = RUNS_ROOT) -> RunDir | None:
    """The newest run directory under `root` made from the same run key, if any."""
    key = run_key(config)
    for manifest in sorted(root.glob(f"{config.experiment}-*/manifest.json"), reverse=True):
        try:
            if json.loads(manifest.read_text()).get("run_key") == key:
                return RunDir(manifest.parent)
        except (OSError, json.JSONDecodeError):
            continue
    return None


# What a resume may change: how training goes on from the checkpoint (its length and optimiser schedule), where
# and how it runs, and what is evaluated and tracked; not the model, its data, its seed or its optimiser kind,
# which the checkpoints were made with.
RESUMABLE = ("description", "train.epochs", "train.lr", "train.momentum", "train.clip_grad_norm",
             "train.decay_epochs", "train.decay_factor", "run", "evaluate", "tracking", "data.data_dir")


def _resume(path: Path, overrides: list[str], flags: dict[str, Any]) -> tuple[Config, RunDir]:
    config_file = path / CONFIG_FILE
    if not config_file.is_file():
        raise UserError(f"{path} is not a run directory (no {CONFIG_FILE})", "pass the directory a run created")
    # Overrides on resume apply on top of the saved config (e.g. a larger --epochs to train further).
    saved = load_config(str(config_file))
    config = load_config(str(config_file), overrides, flags)
    refused = [key for key in config_changes(saved, config)
               if not any(key == allowed or key.startswith(f"{allowed}.") for allowed in RESUMABLE)]
    if refused:
        old, new = flat_config(saved), flat_config(config)
        shown = ", ".join(f"{key} ({old.get(key, 'unset')} → {new.get(key, 'unset')})" for key in refused[:3])
        may = ", ".join(key if key in old else f"{key}.*" for key in RESUMABLE if key != "description")
        raise UserError(
            f"--resume cannot change {shown}: this run's checkpoints were made with the saved "
            f"value{'s' if len(refused) > 1 else ''}",
            f"resume without {'those overrides' if len(refused) > 1 else 'that override'}, or train a new run with "
            f"{'them' if len(refused) > 1 else 'it'} (a new --run-dir); a resume may change {may}",
        )
    return config, RunDir(path)


def run_chain(
    config: Config, run: RunDir, from_stage: str | None = None, force: bool = False,
    stages: tuple[str, ...] = STAGE_NAMES, command_line: str | None = None,
) -> dict[str, Any]:
    """Run the chain (skipping stages whose inputs are unchanged); returns the manifest's metrics. The command
    line that asked for it, if given, joins the manifest's `commands` (an exported model's card shows them)."""
    redo_from = _stage_index(from_stage) if from_stage else len(STAGES)
    wanted = [(stage, force or index >= redo_from) for index, stage in enumerate(STAGES) if stage.name in stages]
    requested = config  # what config.yaml keeps: a later re-run decides W&B's mode afresh
    config = settle_tracking(config, run.path)  # W&B decided once, before the track stage's input hash is taken
    # Each stage's input hash is taken once. Here, before anything runs, up to the first stage that must run;
    # the stages after it read what it writes, so theirs are taken when their turn comes.
    hashes: dict[str, str] = {}
    work_to_do = False
    for stage, redo in wanted:
        hashes[stage.name] = input_hash(stage, config, run)
        if redo or not _finished_with(stage, run, hashes[stage.name]):
            work_to_do = True
            break
    connected = work_to_do and not run.path.exists()
    if connected:  # an unreachable or too-small cluster fails here, before a new directory is made
        connect_ray(config)
    with driving(run) as run:  # a new run's directory is created here, under a name no concurrent run took
        if work_to_do and not connected:  # after the lock: a directory another process drives is said at once
            _check_checkpoints(run, wanted)  # a damaged checkpoint is said before Ray takes a minute to start
            connect_ray(config)  # and before anything is written
        log_to(run.path / LOG_FILE)
        if "train" in stages:  # `eval` has said so already, in its own words
            _say_if_died(run)
        _record_config_change(run, requested)
        atomic_write_text(run.path / CONFIG_FILE, config_to_yaml(requested))
        run.update_manifest(
            experiment=config.experiment, run_key=run_key(config), config=requested.model_dump(mode="json"),
            driver={"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")},
        )
        if command_line:
            run.update_manifest(commands=[*run.read_manifest().get("commands", []), command_line])
        console.print(f"run directory: {run.path}")
        if work_to_do and config.run.address:
            from pipeline.ray.nodes import check_shared

            check_shared(run.path)  # workers and stage tasks on other nodes must see this directory
        for stage, redo in wanted:
            digest = hashes.get(stage.name) or input_hash(stage, config, run)
            if not redo and _finished_with(stage, run, digest):
                seconds = run.read_manifest()["stages"][stage.name].get("seconds", 0)
                console.print(f"[dim]{stage.name:<10} reused (inputs unchanged; took {seconds:.1f}s)[/dim]")
                continue
            try:
                _run_stage(stage, config, run, digest, redo)
            except KeyboardInterrupt as stop:
                terminated = isinstance(stop, Terminated)
                raise Interrupted(_interrupted_message(stage.name, run, terminated),
                                  TERMINATED_EXIT if terminated else INTERRUPTED_EXIT) from None
        metrics = run.read_manifest()["metrics"]
        _print_summary(config, run, metrics)
    return metrics


def _record_config_change(run: RunDir, config: Config) -> None:
    """Keep, in the manifest, what a resume changed and after which epoch: config.yaml then holds the new values,
    and this says that the epochs before were trained with the old ones."""
    manifest = run.read_manifest()
    if manifest.get("config") is None:
        return
    before, after = flat_config(manifest["config"]), flat_config(config)
    changed = {key: [before.get(key), after.get(key)] for key in config_changes(manifest["config"], config)
               if not key.startswith("tracking.")}
    if changed:
        entry = {"after_epoch": latest_epoch(run), "changed": changed}
        run.update_manifest(config_changes=[*manifest.get("config_changes", []), entry])


def connect_ray(config: Config) -> None:
    """Start or join Ray (once per process) and check that it can hold the run's training workers."""
    from pipeline.ray import cluster, trainer

    cluster.connect(config.run.address, trainer.worker_plan(config))


def _check_checkpoints(run: RunDir, wanted: list[tuple[Stage, bool]]) -> None:
    """The checkpoints the stages about to run will read must be readable: training continues from the last
    epoch's (unless it is redone), the later stages read best.pt."""
    redo = {stage.name: again for stage, again in wanted}
    if "train" in redo and not redo["train"]:
        check_for_training(run)
    elif "evaluate" in redo:
        check_for_evaluation(run, required=False)


def _say_if_died(run: RunDir) -> None:
    """Tell the user when an earlier process stopped mid-stage (killed, machine lost) and what happens now."""
    stages = run.read_manifest().get("stages", {})
    died = [name for name, record in stages.items() if record.get("status") == "interrupted"]
    if died:
        console.print(
            f"[yellow]note: an earlier run in this directory stopped during {', '.join(died)}; "
            "continuing from what it finished (training resumes from its last checkpoint)[/yellow]"
        )


def _interrupted_message(stage: str, run: RunDir, terminated: bool = False) -> str:
    """What a Ctrl-C (or SIGTERM) left: the stage it stopped, what is kept, and the command that continues."""
    epochs = [int(row["epoch"]) for row in run.read_metrics() if "epoch" in row]
    kept = f"checkpoints up to epoch {max(epochs)}" if epochs else "no checkpoint yet"
    done = [name for name, record in run.read_manifest().get("stages", {}).items() if record.get("status") == "done"]
    finished = f"finished stages ({', '.join(done)}) and " if done else ""
    return (
        f"interrupted{' (SIGTERM)' if terminated else ''} during {stage}; kept {finished}{kept} in {run.path}. "
        f"Continue with: {command('aae-pipeline run --resume', run.path)}"
    )


def evaluate_existing(run_dir: Path, wandb: str | None = None, force: bool = False,
                      command_line: str | None = None) -> dict[str, Any]:
    """`aae-pipeline eval RUN_DIR`: evaluate → visualize → track on a trained run."""
    config, run = _resume(run_dir, [], {"tracking.wandb": wandb})
    if not (run.best_checkpoint).exists():
        raise UserError(f"{run_dir} has no trained checkpoint",
                        f"train it first: {command('aae-pipeline run --resume', run_dir)}")
    train = run.read_manifest().get("stages", {}).get("train", {})
    if train.get("status") != "done":
        epochs = [int(row["epoch"]) for row in run.read_metrics()]
        console.print(
            f"[bold yellow]warning: training of this run did not finish ({train.get('status', 'not recorded')} "
            f"after epoch {max(epochs, default=0)} of {config.train.epochs}); evaluating its best checkpoint so far. "
            f"Finish it with: {command('aae-pipeline run --resume', run.path)}[/bold yellow]"
        )
    return run_chain(config, run, force=force, stages=("evaluate", "visualize", "track"),
                          command_line=command_line)


def _stage_index(name: str) -> int:
    if name not in STAGE_NAMES:
        raise UserError(f"unknown stage {name!r} for --from", f"choose one of: {', '.join(STAGE_NAMES)}")
    return STAGE_NAMES.index(name)


def _finished_with(stage: Stage, run: RunDir, digest: str) -> bool:
    """Whether the stage finished before with inputs of this hash."""
    if not run.manifest_path.exists():
        return False
    record = run.read_manifest().get("stages", {}).get(stage.name, {})
    return record.get("status") == "done" and record.get("input_hash") == digest


def _run_stage(stage: Stage, config: Config, run: RunDir, digest: str, redo: bool) -> None:
    """Run the stage and record its outcome under its input hash."""
    if stage.name == "train" and redo:
        # A redo asked for by --force / --from must not just resume the finished checkpoints.
        archived = run.archive_training()
        if archived is not None:
            console.print(f"train      redo requested: earlier checkpoints and metrics moved to {archived.name}/")
    if stage.name != "train":
        console.print(f"{stage.name:<10} running…")
    started = time.perf_counter()
    try:
        with run.stage(stage.name, input_hash=digest) as outputs:
            result = _execute(stage, config, run)
            outputs.update({key: value for key, value in result.items() if key != "metrics"})
    except UserError:
        raise
    except Exception as err:
        log_path = run.path / "logs" / f"{stage.name}-error.log"
        log_path.parent.mkdir(exist_ok=True)
        log_path.write_text("".join(traceback.format_exception(err)))
        raise StageError(stage.name, err, str(log_path)) from err
    if result.get("metrics"):
        run.update_manifest(metrics=result["metrics"])
    console.print(f"{stage.name:<10} done in {time.perf_counter() - started:.1f}s")


def _execute(stage: Stage, config: Config, run: RunDir) -> dict[str, Any]:
    if not stage.as_task:
        from pipeline.ray.nodes import this_node

        return {**stage.load()(config, run), "node": this_node()}
    from pipeline.ray.tasks import run_as_task

    return run_as_task(stage.load(), config, run)


# The numbers printed under the summary table: the paper's errors, and its figures as numbers (metric, label,
# factor to a percentage, and what the number means where it is not plain).
HEADLINES = (
    ("test/error", "test error", 1, ""), ("test/cluster_error", "test cluster error", 1, ""),
    ("test/dimred_error", "dimensionality-reduction error", 1, ""),
    ("test/style_grid_accuracy", "style-grid cells drawn as their column's class", 1,
     " (style_grid.png; 100%: the label sets the digit and the style code the rest; about 10%: the decoder ignores "
     "the label and redraws each row's own digit in every column)"),
    ("test/heads_read_as_cluster", "cluster heads read as their cluster's digit", 1, ""),
    ("test/codes_on_prior", "test codes on the prior", 100, ""),
    ("test/codes_on_own_component", "test codes on their own class's component", 100, ""),
)


def _print_summary(config: Config, run: RunDir, metrics: dict[str, Any]) -> None:
    shown = {key: value for key, value in metrics.items() if key.startswith(("test/", "val/")) or key == "epoch"}
    console.print(summary_table(f"{config.experiment}: results", shown or metrics))
    for key, label, percent_per_unit, meaning in HEADLINES:
        if metrics.get(key) is not None:
            console.print(f"[bold]{label}: {metrics[key] * percent_per_unit:.2f}%[/bold]{meaning}")
    from pipeline.stages.evaluate import heads_warning  # torch: loaded only once there are results

    if warning := heads_warning(metrics):
        console.print(f"[bold yellow]{warning}[/bold yellow]")
    track = run.read_manifest().get("stages", {}).get("track", {}).get("outputs", {})
    if track.get("wandb_sync"):
        console.print(f"W&B run saved offline; upload it with: {track['wandb_sync']}")
    for key, job in (("wandb_train_error", "train"), ("wandb_error", "evaluate")):  # from Ray workers: said here
        if track.get(key):
            console.print(f"warning: W&B tracking failed ({job} run: {track[key]}); results are unaffected")
    console.print(f"results: {run.path}")
