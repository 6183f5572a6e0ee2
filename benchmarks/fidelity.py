"""One fidelity experiment: train an experiment in this process (no Ray), score it on the test set, and
append a row to benchmarks/results/fidelity.jsonl (the log whose table `table` prints, kept in fidelity-log.md).

    python benchmarks/fidelity.py cluster16 --epochs 5 --set data.limit=10000 --set model.params.z_prior_std=1 \
        --note "style prior std 1"

Rows keep every run, failures included: the setting, epochs, categories used, error, NMI, style spread,
the figure measures. A run trained through the CLI (benchmarks/reproduce.py) is logged the same way:

    python benchmarks/fidelity.py record --record-as dimred-2d --keep benchmarks/runs/reproduce/dimred-2d-1000 \
        --note "committed config, full MNIST"

A run kept with --keep is scored again by today's evaluate stage (after a metric was fixed) with `rescore`, given
the overrides and epochs it trained with:

    python benchmarks/fidelity.py rescore --record-as dimred-2d-unsup --keep /tmp/run --epochs 10 \
        --set model.params.z_prior_std=0.5 --note "rescored"

On a GPU (`--device cuda`), `--minutes M` ends training after the first epoch that finishes past M minutes
(the long curves), `--results FILE` logs elsewhere and `--figures DIR` copies the run's figures there.
Many settings side by side: benchmarks/fidelity_batch.py.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import tempfile
import time
from pathlib import Path

import torch

from pipeline.config import Config, load_config
from pipeline.loop import WorkerContext, train_loop
from pipeline.rundir import RunDir
from pipeline.stages.evaluate import evaluate
from pipeline.stages.visualize import visualize

RESULTS = Path(__file__).resolve().parent / "results" / "fidelity.jsonl"
# The numbers a fidelity row shows, in this order, where the model has them.
SHOWN = ("test/cluster_error", "test/cluster_error_majority", "test/error", "test/dimred_error",
         "test/clusters_used", "test/nmi", "test/z_std_ratio", "test/parzen_ll", "test/style_grid_accuracy",
         "test/components_used", "test/codes_on_prior", "test/codes_on_own_component", "test/code_mean_error",
         "test/code_cov_error", "test/heads_read_as_cluster", "test/distinct_heads")
# The figure measures (evaluate stage), shown in the table's "figure" column where a run has them.
FIGURE = {"test/style_grid_accuracy": "grid {:.1f}%", "test/components_used": "{:d} comp.",
          "test/codes_on_prior": "{:.1%} on prior", "test/codes_on_own_component": "{:.1%} own segment",
          "test/code_mean_error": "mean err {:.3f}", "test/code_cov_error": "cov err {:.3f}",
          "test/heads_read_as_cluster": "heads right {:.1f}%", "test/distinct_heads": "distinct heads {:d}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", help="an experiment name, 'table' to print the log as markdown, 'record' "
                        "to log a run trained elsewhere, or 'rescore' to score a kept run again and log it")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--note", default="")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="keep the run directory here (default: a temp dir)")
    parser.add_argument("--record-as", help="with 'record' or 'rescore': the experiment the run at --keep trained")
    parser.add_argument("--device", default="cpu", help="train on this torch device (cuda: CUDA graphs)")
    parser.add_argument("--minutes", type=float, help="stop after the first epoch that ends past this")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the log to append to")
    parser.add_argument("--figures", type=Path, help="also draw the run's figures and copy them here")
    args = parser.parse_args()
    if args.experiment == "table":
        print(table(), end="")
        return
    # record: a run made elsewhere (e.g. by reproduce.py through the CLI), with the scores it has; rescore: a kept
    # run scored again by today's evaluate stage (after a metric was fixed).
    if args.experiment in ("record", "rescore"):
        if not args.keep or not args.record_as:
            parser.error(f"{args.experiment} needs --keep RUN_DIR and --record-as EXPERIMENT")
        test = None
        if args.experiment == "rescore":
            if args.epochs is None:
                parser.error("rescore needs the run's --epochs (and its --set overrides)")
            test = evaluate(fidelity_config(args.record_as, args.epochs, args.overrides), RunDir(args.keep))["metrics"]
        row = record(args.record_as, RunDir(args.keep), args.overrides, args.note, test, results=args.results)
        print(json.dumps({key: row[key] for key in SHOWN if key in row}))
        return
    if args.epochs is None:
        parser.error("--epochs is required to train")
    torch.set_num_threads(args.threads)
    row = fidelity_run(args.experiment, args.epochs, args.overrides, args.note, args.keep,
                       device=args.device, minutes=args.minutes, results=args.results,
                       figures=args.figures)
    shown = "  ".join(f"{key.removeprefix('test/')} {_fmt(row[key])}" for key in SHOWN if key in row)
    print(f"{args.experiment} {' '.join(args.overrides)} | {row['epochs']} epochs"
          f"{' DIVERGED' if row['diverged'] else ''} | {shown} | {row['seconds']}s")


def fidelity_config(experiment: str, epochs: int, overrides: list[str]) -> Config:
    """The experiment's config with the overrides, trained `epochs` epochs, no W&B, Parzen on 2,000 samples."""
    return load_config(experiment, [*overrides, f"train.epochs={epochs}", "tracking.wandb=disabled",
                                    "evaluate.parzen_samples=2000"])


class _OutOfTime(Exception):
    """Raised after the epoch that ends past the --minutes limit."""


def fidelity_run(experiment: str, epochs: int, overrides: list[str], note: str, keep: Path | None = None, *,
                 device: str = "cpu", minutes: float | None = None,
                 results: Path = RESULTS, figures: Path | None = None) -> dict:
    """Train and score one setting in this process; append its row to the results log and return it."""
    config = fidelity_config(experiment, epochs, overrides)
    started = time.perf_counter()

    def stop_when_out_of_time(metrics: dict[str, float]) -> None:
        if minutes is not None and time.perf_counter() - started > 60 * minutes:
            raise _OutOfTime

    with tempfile.TemporaryDirectory() as tmp:
        run = RunDir(keep or Path(tmp) / "run")
        run.path.mkdir(parents=True, exist_ok=True)
        try:
            train_loop(config, run, WorkerContext(device=torch.device(device)), report=stop_when_out_of_time)
        except _OutOfTime:
            note = f"{note} (stopped after {minutes:g} min)".strip()
        test = evaluate(config, run)["metrics"] if run.read_metrics() else {}
        if figures is not None and test:
            figures.mkdir(parents=True, exist_ok=True)
            # The setting is in the name: a batch runs several settings of one experiment into one folder.
            stem = re.sub(r"[^\w.=-]+", "-", "-".join([experiment, *overrides]))
            for name, relative in visualize(config, run)["figures"].items():
                shutil.copy(run.path / relative, figures / f"{stem}-{name}.png")
        return record(experiment, run, overrides, note, test, round(time.perf_counter() - started), results)


def record(experiment: str, run: RunDir, overrides: list[str], note: str, test: dict | None = None,
           seconds: int | None = None, results: Path = RESULTS) -> dict:
    """Append a trained run's fidelity row (its test metrics, validation curve, divergence) and return it."""
    history = run.read_metrics()
    if test is None:
        evaluation = run.path / "evaluation.json"
        test = json.loads(evaluation.read_text())["metrics"] if evaluation.is_file() else {}
    row = {
        "experiment": experiment, "overrides": overrides, "epochs": len(history),
        "diverged": run.divergence() is not None, "note": note, "seconds": seconds,
        **{key: value for key, value in test.items() if key in SHOWN},
        "curve": [{k: v for k, v in h.items() if k.startswith("val/") or k == "epoch"} for h in history],
    }
    results.parent.mkdir(parents=True, exist_ok=True)
    with results.open("a") as log:
        log.write(json.dumps(row) + "\n")
    return row


def table() -> str:
    """Every logged run as a markdown table, in the order they ran (kept in fidelity-log.md)."""
    lines = ["| # | experiment | setting | epochs | categories used | error % | NMI | style spread | figure | note |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for number, line in enumerate(RESULTS.read_text().splitlines(), 1):
        row = json.loads(line)
        error = next((row[key] for key in ("test/cluster_error", "test/dimred_error", "test/error") if key in row),
                     None)
        epochs = f"{row['epochs']}{' (diverged)' if row['diverged'] else ''}"
        setting = " ".join(f"`{item}`" for item in row["overrides"]) or "committed config"
        lines.append(f"| {number} | {row['experiment']} | {setting} | {epochs} | {_fmt(row.get('test/clusters_used'))} "
                     f"| {_fmt(error)} | {_fmt(row.get('test/nmi'))} | {_fmt(row.get('test/z_std_ratio'))} "
                     f"| {_figure(row)} | {row['note']} |")
    return "\n".join(lines) + "\n"


def _figure(row: dict) -> str:
    shown = [form.format(int(row[key]) if "{:d}" in form else row[key])
             for key, form in FIGURE.items() if row.get(key) is not None]
    return ", ".join(shown) or "-"


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return "nan" if isinstance(value, float) and math.isnan(value) else f"{value:.4g}"


if __name__ == "__main__":
    main()
