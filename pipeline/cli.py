"""The `aae-pipeline` command line: parse, call the pipeline, turn user mistakes into one line and exit 2."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from pipeline.errors import Interrupted, StageError, UserError, command

app = typer.Typer(
    name="aae-pipeline",
    help="Train the Adversarial Autoencoder family as a distributed Ray pipeline.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Prepare and inspect datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Where prepared datasets live (default: $AAE_DATA_DIR or ~/.cache/aae-pipeline/data)."
    ),
]


@data_app.command("prepare")
def data_prepare(
    source: Annotated[str, typer.Argument(
        help="'mnist' or 'svhn' (downloaded), 'idx:/path/to/dir' for a directory of IDX files, or "
             "'svhn:/path/to/dir' for SVHN's train_32x32.mat and test_32x32.mat (extra_32x32.mat optional).")],
    data_dir: DataDirOption = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if a valid copy exists.")] = False,
) -> None:
    """Turn a dataset into verified Parquet files under the data directory."""
    # imported here so `--help` stays fast
    from pipeline.data import changed_since_prepared, dataset_summary, is_prepared, prepare_dataset

    kept = not force and is_prepared(source, data_dir=data_dir)
    prepare_dataset(source, data_dir=data_dir, force=force)
    if not kept:
        typer.echo(f"prepared {dataset_summary(source, data_dir=data_dir)}")
        return
    typer.echo(f"already prepared (checksums verified): {dataset_summary(source, data_dir=data_dir)}")
    changed = changed_since_prepared(source, data_dir=data_dir)
    if changed:
        again = command("aae-pipeline data prepare", shlex.quote(source), "--force",
                        *(["--data-dir", data_dir] if data_dir else []))
        typer.echo(f"note: {changed} since this copy was made; the copy was kept as it was. To rebuild it from the "
                   f"files now there: {again}")


WandbOption = Annotated[
    str | None,
    typer.Option("--wandb", help="online | offline | disabled (default: online with credentials, else offline)."),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override any config key, e.g. --set data.labels=1000 (repeatable)."),
]


@app.command("experiments")
def experiments() -> None:
    """List the paper's experiments this tool can run."""
    from pipeline.config import list_experiments
    from pipeline.progress import console

    for name, description in list_experiments().items():
        console.print(f"[bold]{name:<20}[/bold] {description}")


@app.command("show-config")
def show_config(
    experiment: Annotated[str, typer.Argument(help="Experiment name or YAML file.")],
    overrides: SetOption = None,
) -> None:
    """Print an experiment's fully resolved config (every key --set can override)."""
    from pipeline.config import config_to_yaml, load_config

    print(config_to_yaml(load_config(experiment, overrides or [])), end="")


@app.command("run")
def run(
    experiment: Annotated[
        str | None, typer.Argument(help="Experiment name (see `experiments`) or a config YAML file.")
    ] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="Ray Train workers (DDP).")] = None,
    gpus_per_worker: Annotated[
        float | None, typer.Option("--gpus-per-worker", help="0: CPU with gloo; >0: CUDA with NCCL.")
    ] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Training epochs.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Random seed.")] = None,
    run_dir: Annotated[Path | None, typer.Option("--run-dir", help="Where results land.")] = None,
    address: Annotated[
        str | None, typer.Option("--address", help="An existing Ray cluster (host:port); default: local.")
    ] = None,
    resume: Annotated[
        Path | None, typer.Option("--resume", help="Continue the run in this directory from its checkpoint.")
    ] = None,
    overrides: SetOption = None,
    from_stage: Annotated[
        str | None, typer.Option("--from", help="Redo this stage and the ones after it (prepare|train|evaluate|"
                                              "visualize|track).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Redo every stage even if its inputs are unchanged.")] = False,
    wandb: WandbOption = None,
) -> None:
    """Train one experiment with Ray Train, then evaluate, draw and track it; everything lands in a run directory."""
    from pipeline.chain import resolve_run, run_chain

    flags = {
        "run.workers": workers,
        "run.gpus_per_worker": gpus_per_worker,
        "train.epochs": epochs,
        "train.seed": seed,
        "run.address": address,
        "tracking.wandb": wandb,
    }
    config, run_directory = resolve_run(experiment, overrides or [], flags, run_dir, resume)
    run_chain(config, run_directory, from_stage=from_stage, force=force, command_line=_command_line())


@app.command("eval")
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run directory with a trained checkpoint.")],
    wandb: WandbOption = None,
    force: Annotated[bool, typer.Option("--force", help="Redo the stages even if their inputs are unchanged.")] = False,
) -> None:
    """Run evaluate → visualize → track on an existing run."""
    from pipeline.chain import evaluate_existing

    evaluate_existing(run_dir, wandb=wandb, force=force, command_line=_command_line())


@app.command("report")
def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="One or more run directories.")],
    fmt: Annotated[str, typer.Option("--format", help="table (fits the terminal) | markdown | csv | json.")]
    = "table",
) -> None:
    """Print the paper's tables with the paper's numbers beside these runs' numbers."""
    from pipeline.report import print_report

    print_report(run_dirs, fmt)


RunOrFolder = Annotated[Path, typer.Argument(help="A run directory, or a model folder `export` wrote.")]
ForceOption = Annotated[bool, typer.Option("--force", help="Replace the output if it exists.")]


@app.command("predict")
def predict(
    run_dir: RunOrFolder,
    data: Annotated[str, typer.Option(
        "--data", help="mnist | svhn | idx:/dir | svhn:/dir (a split of it, see --split), or an .npy / .npz / "
                       "Parquet file of images (uint8, or floats in [0, 1]).")],
    out: Annotated[Path, typer.Option("--out", help="The Parquet file to write (with workers: a folder of shards).")],
    split: Annotated[str | None, typer.Option("--split", help="train | validation | test (default) of a dataset.")]
    = None,
    data_dir: DataDirOption = None,
    workers: Annotated[int | None, typer.Option(
        "--workers", help="Score through Ray Data with this many model actors (default with --address: 2).")] = None,
    address: Annotated[str | None, typer.Option("--address", help="A Ray cluster to score on (host:port).")] = None,
    gpus_per_worker: Annotated[float, typer.Option("--gpus-per-worker", help="GPUs per model actor.")] = 0.0,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Images per forward pass.")] = None,
    force: ForceOption = False,
) -> None:
    """Apply a trained model to every image: one row each, with every output the model has, as Parquet."""
    from pipeline.predict import PredictRequest
    from pipeline.predict import predict as score

    for name, value in (("--workers", workers), ("--batch-size", batch_size)):
        if value is not None and value < 1:
            raise UserError(f"{name} must be at least 1 (got {value})", "pass a positive number")
    request = PredictRequest(run=run_dir, data=data, out=out, split=split, data_dir=data_dir, force=force,
                             batch_size=batch_size)
    summary = score(request, workers=workers, address=address, gpus_per_worker=gpus_per_worker)
    where = f"{summary['shards']} shards on {summary['nodes']} node(s) in" if "shards" in summary else "to"
    typer.echo(f"wrote {summary['rows']:,} rows {where} {summary['out']} ({summary['images_per_s']} images/s)")


@app.command("sample")
def sample(
    run_dir: RunOrFolder,
    out: Annotated[Path, typer.Option("--out", help="A .png picture grid or an .npy array of the images.")],
    n: Annotated[int, typer.Option("--n", help="How many images.")] = 64,
    label: Annotated[int | None, typer.Option(
        "--label", help="The class or cluster every sample shows (models that can be told one).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="The same seed draws the same images.")] = 0,
    force: ForceOption = False,
) -> None:
    """Draw images from a trained model's prior."""
    import io

    import numpy as np

    from pipeline.inference import load_run
    from pipeline.rundir import atomic_write_bytes

    out = out.expanduser()
    if out.suffix.lower() not in (".png", ".npy"):
        raise UserError(f"--out {out} is neither .png nor .npy", "name a .png (a picture grid) or an .npy file")
    if out.exists() and not force:
        raise UserError(f"{out} already exists", "pick another --out, or pass --force to replace it")
    images = load_run(run_dir).sample(n, label, seed)
    if out.suffix.lower() == ".npy":
        buffer = io.BytesIO()
        np.save(buffer, images, allow_pickle=False)
        atomic_write_bytes(out, buffer.getvalue())
    else:
        from pipeline.stages.visualize import save_image_grid

        save_image_grid(images, out)
    typer.echo(f"wrote {n} samples{f' of label {label}' if label is not None else ''} to {out}")


@app.command("export")
def export(
    run_dir: Annotated[Path, typer.Argument(help="A run directory with a trained checkpoint.")],
    out: Annotated[Path, typer.Option("--out", help="The model folder to write.")],
    force: ForceOption = False,
) -> None:
    """Write a run's model as a self-contained folder: config.json, model.safetensors and a model card."""
    from pipeline.export import export_run

    folder = export_run(run_dir, out, force=force)
    typer.echo(f"exported {run_dir} to {folder}; load it with: from pipeline import load_run; "
               f"load_run({str(folder)!r})")


@app.command("tune")
def tune(
    experiment: Annotated[
        str | None, typer.Argument(help="Experiment name (see `experiments`) or a config YAML file.")
    ] = None,
    samples: Annotated[
        int | None, typer.Option("--samples", help="Trials to draw (grid search: passes over the grid; default 8 / 1).")
    ] = None,
    workers_per_trial: Annotated[
        int, typer.Option("--workers-per-trial", help="1: train in the trial's process; >1: a TorchTrainer each.")
    ] = 1,
    scheduler: Annotated[str, typer.Option("--scheduler", help="asha (stops poor trials early) | fifo.")] = "asha",
    search: Annotated[str, typer.Option("--search", help="random | grid | optuna.")] = "random",
    space: Annotated[
        Path | None, typer.Option("--space", help="Search space YAML (default: conf/search/<family>.yaml).")
    ] = None,
    address: Annotated[
        str | None, typer.Option("--address", help="An existing Ray cluster (host:port); default: local.")
    ] = None,
    max_concurrent: Annotated[
        int | None, typer.Option("--max-concurrent", help="Trials at once (default: cores // workers-per-trial).")
    ] = None,
    grace_period: Annotated[int, typer.Option("--grace-period", help="Epochs before ASHA may stop a trial.")] = 1,
    gpus_per_trial: Annotated[
        float | None, typer.Option("--gpus-per-trial", help="GPUs per trial; 0.25 runs 4 trials per GPU.")
    ] = None,
    trials_per_process: Annotated[
        int, typer.Option("--trials-per-process",
                          help="Trials trained together in one worker process, which holds one trial's CPUs and GPUs.")
    ] = 1,
    sweep_dir: Annotated[
        Path | None, typer.Option("--sweep-dir", help="Where results land (default: sweeps/<experiment>-<time>).")
    ] = None,
    overrides: SetOption = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Training epochs of every trial.")] = None,
    wandb: WandbOption = None,
    resume: Annotated[
        Path | None, typer.Option("--resume", help="Continue the interrupted sweep in this (your own) directory.")
    ] = None,
) -> None:
    """Search hyperparameters of one experiment with Ray Tune; results and best.yaml land in a sweep directory."""
    from pipeline.sweep import SweepOptions, resume_sweep, start_sweep

    if resume is not None:
        if experiment is not None or overrides or space is not None or epochs is not None:
            raise UserError("--resume continues a sweep as it was started", "pass only --resume SWEEP_DIR [--address]")
        result = resume_sweep(resume, address)
    elif experiment is None:
        raise UserError("no experiment given", "name one (see `aae-pipeline experiments`) or pass --resume SWEEP_DIR")
    else:
        options = SweepOptions(
            samples=samples,
            workers_per_trial=workers_per_trial,
            scheduler=scheduler,
            search=search,
            max_concurrent=max_concurrent,
            grace_period=grace_period,
            address=address,
            gpus_per_trial=gpus_per_trial,
            trials_per_process=trials_per_process,
        )
        tracking = [f"tracking.wandb={wandb}"] if wandb else []
        result = start_sweep(experiment, options, [*(overrides or []), *tracking], space, epochs, sweep_dir)
    if result.status != "done":  # interrupted: the resume command is printed; failed: every trial errored
        from pipeline.signals import exit_code_for_interruption

        raise typer.Exit(exit_code_for_interruption() if result.status == "interrupted" else 1)


def _command_line() -> str:
    """This command as typed (quoted for a shell), for the run's record."""
    return shlex.join(["aae-pipeline", *sys.argv[1:]])


def _check_utf8(arguments: list[str]) -> None:
    """Refuse an argument that is not UTF-8 (Python keeps its bytes as surrogates, which Ray, YAML and W&B reject
    deep inside a run)."""
    for argument in arguments:
        raw = os.fsencode(argument)
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as err:
            shown = raw.decode("utf-8", "backslashreplace")
            raise UserError(f"the argument '{shown}' is not UTF-8 text (byte {raw[err.start]:#04x})",
                            "give paths and values in UTF-8 (rename a directory whose name is not)") from None


def main() -> None:
    """Console-script entry point: run the app; a UserError becomes one line on stderr and exit code 2."""
    from pipeline.signals import Terminated, stop_on_sigterm

    stop_on_sigterm()
    try:
        _check_utf8(sys.argv[1:])
        # Outside standalone mode click returns a command's typer.Exit code instead of raising it.
        code = app(standalone_mode=False)
    except UserError as err:
        print(f"error: {err.one_line()}", file=sys.stderr)
        sys.exit(2)
    except StageError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except Interrupted as err:
        print(str(err), file=sys.stderr)
        sys.exit(err.exit_code)
    except (typer.Abort, KeyboardInterrupt) as err:
        print("interrupted", file=sys.stderr)
        sys.exit(143 if isinstance(err, Terminated) else 130)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except typer.TyperException as err:  # usage errors (unknown command, bad option) in standalone_mode=False
        show = getattr(err, "show", None)
        if show is not None:
            show()
        else:
            print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()
