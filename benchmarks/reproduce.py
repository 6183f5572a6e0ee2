"""Run the paper's experiments through the CLI and put our numbers beside the paper's.

    .venv/bin/python benchmarks/reproduce.py                      # everything, each config's own epochs
    .venv/bin/python benchmarks/reproduce.py --only semisup-1000 cluster16 --epochs 50 --workers 4
    .venv/bin/python benchmarks/reproduce.py --only semisup --limit 500 --epochs 1 \\
        --out-dir /tmp/repro --results /tmp/repro/reproduce.md     # a tiny smoke try
    .venv/bin/python benchmarks/reproduce.py --only semisup-svhn --svhn svhn:/data/svhn   # your .mat files
    .venv/bin/python benchmarks/reproduce.py --only semisup-100 semisup-1000 --epochs 300 \
        --parallel 2 --gpus-per-worker 1 --minutes 9      # two long rows sharing one GPU for a 9-minute window

Each experiment is one `aae-pipeline run` into <out-dir>/<key>; its number is read back from the run's
manifest.json `metrics` (or evaluation.json). Resumable: a run that already has its metric at the asked
epochs is skipped, an unfinished one is continued with `--resume`. The table (markdown and JSON) is rebuilt
from every run under <out-dir> after each experiment, so a long sweep can be read while it runs.

`--parallel N` trains N rows at once, each in its own process (on a GPU they share the card). `--minutes M`
is the window: when it is up, the rows still training are stopped as Ctrl-C would stop them (their checkpoints
kept) and rows not yet started wait; the same command continues them, so a table fills over several windows.
Every row records its validation curve (in the JSON, and drawn under <results stem>-curves/) and the device
that trained it.

SVHN rows run only where SVHN can be prepared (downloaded through torchvision, or the official .mat files
named by --svhn svhn:/dir); elsewhere the row says "no data" and how to get it, and the other rows still run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pipeline.errors import UserError
from pipeline.rundir import CONFIG_FILE, RunDir, atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "runs" / "reproduce"
DEFAULT_RESULTS = ROOT / "benchmarks" / "results" / "reproduce.md"


@dataclass(frozen=True)
class Experiment:
    """One number of the paper: which config, which overrides, which metric, and the paper's value."""

    key: str
    config: str
    setting: str
    metric: str
    paper: str
    overrides: tuple[str, ...] = ()
    svhn: bool = False  # trains on SVHN: the --svhn source, and only where it can be prepared


EXPERIMENTS = (
    Experiment("semisup-100", "semisup", "semi-supervised, 100 labels", "test/error", "1.90 ±0.10",
               ("data.labels=100",)),
    Experiment("semisup-1000", "semisup", "semi-supervised, 1000 labels", "test/error", "1.60 ±0.08",
               ("data.labels=1000",)),
    Experiment("semisup-all", "semisup", "semi-supervised, all labels", "test/error", "0.85 ±0.02",
               ("data.labels=all",)),
    Experiment("semisup-svhn", "semisup-svhn", "semi-supervised SVHN, 1000 labels", "test/error", "17.70 ±0.30",
               svhn=True),
    Experiment("cluster16", "cluster16", "unsupervised clustering, 16 clusters", "test/cluster_error", "9.55"),
    Experiment("cluster30", "cluster30", "unsupervised clustering, 30 clusters", "test/cluster_error", "4.10"),
    Experiment("dimred-2d-1000", "dimred-2d", "dim. reduction to 2-D, 1000 labels", "test/dimred_error", "4.20",
               ("data.labels=1000",)),
    Experiment("dimred-2d-100", "dimred-2d", "dim. reduction to 2-D, 100 labels", "test/dimred_error", "6.08",
               ("data.labels=100",)),
    Experiment("dimred-2d-unsup", "dimred-2d-unsup", "dim. reduction to 2-D, no labels, 20 clusters",
               "test/dimred_error", "13.95"),
    Experiment("dimred-10d", "dimred-10d", "dim. reduction to 10-D, 100 labels", "test/dimred_error", "3.90"),
    # The paper shows these as figures; the evaluate stage measures them (the targets set for them in brackets).
    Experiment("supervised-style", "supervised", "style/content: style-grid cells read as their column's class, %",
               "test/style_grid_accuracy", "Fig. 6 [>= 90]"),
    Experiment("unsup-mixture", "unsup-mixture", "2-D mixture of 10 prior: share of test codes on the prior",
               "test/codes_on_prior", "Fig. 2 [>= 0.90]"),
    Experiment("labelreg-swissroll", "labelreg-swissroll", "swiss roll prior: share of test codes on their "
               "class's segment", "test/codes_on_own_component", "Fig. 4 [>= 0.80]"),
    # The paper's likelihood experiment codes MNIST in 8-D (Gaussian prior, std 5); unsup-gaussian's 2-D is for maps.
    Experiment("parzen-unsup-gaussian", "unsup-gaussian-8d", "Parzen log-likelihood (nats), 8-D Gaussian prior",
               "test/parzen_ll", "340 ±2"),
)
BY_KEY = {experiment.key: experiment for experiment in EXPERIMENTS}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="EXP",
                        help="experiment keys or config names (e.g. semisup = its three label counts); "
                             f"keys: {' '.join(BY_KEY)}")
    parser.add_argument("--epochs", type=int, help="training epochs (default: each config's own)")
    parser.add_argument("--workers", type=int, default=1, help="Ray Train workers per run (default 1)")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0,
                        help="GPUs per Ray Train worker (default 0: CPU); rows run with --parallel share the card")
    parser.add_argument("--seed", type=int, help="training seed (default: each config's own)")
    parser.add_argument("--parallel", type=int, default=1, metavar="N",
                        help="rows trained at once, each in its own process (default 1)")
    parser.add_argument("--minutes", type=float,
                        help="stop the rows still training after this long (checkpoints kept; the same command "
                             "continues them) and start no more")
    parser.add_argument("--limit", type=int, help="train on the first N examples only (smoke tries)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="a config override for every row, as `aae-pipeline run --set` (repeatable)")
    parser.add_argument("--address", help="an existing Ray cluster, host:port (default: a local Ray per run)")
    parser.add_argument("--svhn", default="svhn", metavar="SOURCE",
                        help="SVHN for the SVHN rows: svhn (torchvision download, default) or svhn:/dir of the "
                             "official .mat files")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT, help="where the run directories go")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="the markdown table (JSON beside it)")
    return parser.parse_args(argv)


def select(only: list[str] | None) -> list[Experiment]:
    """The experiments named by --only (a key, or a config name for all of its settings), in table order."""
    if not only:
        return list(EXPERIMENTS)
    unknown = [name for name in only if name not in BY_KEY and not any(e.config == name for e in EXPERIMENTS)]
    if unknown:
        sys.exit(f"error: unknown experiment {' '.join(unknown)}; choose from: {' '.join(BY_KEY)}")
    return [e for e in EXPERIMENTS if e.key in only or e.config in only]


def cli_args(experiment: Experiment, args: argparse.Namespace, run_dir: Path, resume: bool) -> list[str]:
    """The `aae-pipeline` arguments that run this experiment from scratch, or continue it (`resume`)."""
    command = ["run", "--resume", str(run_dir)] if resume else ["run", experiment.config, "--run-dir", str(run_dir)]
    if args.epochs is not None:
        command += ["--epochs", str(args.epochs)]
    command += ["--workers", str(args.workers)]
    if args.gpus_per_worker:
        command += ["--gpus-per-worker", f"{args.gpus_per_worker:g}"]
    if args.seed is not None and not resume:
        command += ["--seed", str(args.seed)]
    if args.address:
        command += ["--address", args.address]
    if not resume:  # a resumed run keeps its saved overrides
        overrides = [*experiment.overrides, *([f"data.limit={args.limit}"] if args.limit else []), *args.overrides]
        if experiment.svhn and args.svhn != "svhn":
            overrides.append(f"data.dataset={args.svhn}")
        for override in overrides:
            command += ["--set", override]
    return command


def shown(command: list[str]) -> str:
    """The command as a user would type it from the repository root."""
    relative = [arg.removeprefix(f"{ROOT}/") for arg in command]
    return shlex.join(["aae-pipeline", *relative])


def read_metrics(run_dir: Path) -> dict[str, Any]:
    """A run's final numbers: the manifest's metrics, topped up from evaluation.json."""
    metrics: dict[str, Any] = {}
    evaluation = run_dir / "evaluation.json"
    if evaluation.is_file():
        payload = json.loads(evaluation.read_text())
        metrics.update(payload.get("metrics", payload))
    if (run_dir / "manifest.json").is_file():
        metrics.update(RunDir(run_dir).read_manifest().get("metrics") or {})
    return metrics


def finished(experiment: Experiment, args: argparse.Namespace, run_dir: Path) -> bool:
    """Whether the run already holds its metric, trained for the asked epochs (on the asked data, or we stop)."""
    if not (run_dir / "manifest.json").is_file():
        return False
    config = RunDir(run_dir).read_manifest().get("config") or {}
    limit = (config.get("data") or {}).get("limit")
    if limit != args.limit:
        sys.exit(f"error: {run_dir} was trained with data.limit={limit}, not {args.limit}; use another --out-dir")
    seed = (config.get("train") or {}).get("seed")
    if args.seed is not None and seed != args.seed:
        sys.exit(f"error: {run_dir} was trained with seed {seed}, not {args.seed}; use another --out-dir")
    if read_metrics(run_dir).get(experiment.metric) is None:
        return False
    return args.epochs is None or (config.get("train") or {}).get("epochs") == args.epochs


@dataclass
class Training:
    """A row being trained: its `aae-pipeline run` process and where its output goes."""

    experiment: Experiment
    run_dir: Path
    process: subprocess.Popen
    log: IO[str]
    log_path: Path
    started: float


def start(experiment: Experiment, args: argparse.Namespace, cli: list[str]) -> Training | dict[str, Any] | None:
    """Start (or continue) one experiment through the CLI, its output going to <out-dir>/<key>.log. None if it
    is done already; the attempt itself if it cannot run here."""
    run_dir = (args.out_dir / experiment.key).resolve()
    if finished(experiment, args, run_dir):
        print(f"{experiment.key:<22} done before: {experiment.metric} = {read_metrics(run_dir)[experiment.metric]:.4g}")
        return None
    if experiment.svhn:
        missing = svhn_missing(args.svhn)
        if missing is not None:
            print(f"{experiment.key:<22} skipped: {missing}")
            return {"command": None, "returncode": 0, "wall_s": None, "status": f"no data: {missing}"}
    command = cli_args(experiment, args, run_dir, resume=(run_dir / CONFIG_FILE).exists())
    print(f"{experiment.key:<22} running: {shown(command)}", flush=True)
    log_path = args.out_dir / f"{experiment.key}.log"
    log = log_path.open("a")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    # A session of its own: a Ctrl-C or `timeout` of this script reaches each run once, through stop().
    process = subprocess.Popen([*cli, *command], stdout=log, stderr=subprocess.STDOUT, env=env,
                               start_new_session=True)
    return Training(experiment, run_dir, process, log, log_path, time.perf_counter())


def collect(training: Training, args: argparse.Namespace, device: str, stopped: bool = False) -> dict[str, Any]:
    """The attempt of a row whose process has ended: its command, exit code, time and device."""
    training.log.close()
    experiment, returncode = training.experiment, training.process.returncode
    wall_s = time.perf_counter() - training.started
    value = read_metrics(training.run_dir).get(experiment.metric)
    status = None
    if stopped and not (returncode == 0 and value is not None):  # not one that finished as the time ran out
        epochs = RunDir(training.run_dir).read_metrics() if (training.run_dir / "manifest.json").is_file() else []
        reached = epochs[-1]["epoch"] if epochs else 0
        status = f"stopped at the time limit after epoch {reached}; the same command continues it"
        print(f"{experiment.key:<22} {status}")
        returncode = 0
    elif returncode != 0 or value is None:
        tail = training.log_path.read_text().splitlines()[-15:]
        print(f"{experiment.key:<22} FAILED (exit {returncode}, no {experiment.metric}); log {training.log_path}:",
              *tail, sep="\n    ")
        returncode = returncode or 1
    else:
        print(f"{experiment.key:<22} {experiment.metric} = {value:.4g} in {wall_s:.0f}s")
    # The table shows the from-scratch command, even when this call continued an earlier run.
    fresh = shown(cli_args(experiment, args, training.run_dir, resume=False))
    return {"command": fresh, "returncode": returncode, "wall_s": wall_s, "device": device, "status": status}


def stop(trainings: list[Training], grace_s: float = 180.0) -> None:
    """Stop rows as `timeout` would (SIGTERM: each run saves, marks itself interrupted and exits), then wait."""
    for training in trainings:
        if training.process.poll() is None:
            training.process.send_signal(signal.SIGTERM)
    for training in trainings:
        try:
            training.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            training.process.kill()
            training.process.wait()


def device_name(args: argparse.Namespace) -> str:
    """The device the rows train on here, for the table."""
    if args.address:
        return f"Ray cluster {args.address}"
    if args.gpus_per_worker:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    return f"CPU, {os.cpu_count()} cores ({platform.machine()})"


def svhn_missing(source: str) -> str | None:
    """None when SVHN (`source`) is prepared or can be prepared here now; else why not and how to get it."""
    from pipeline.data import prepare_dataset  # pyarrow and friends only when an SVHN row is asked for

    try:
        prepare_dataset(source)
    except UserError as err:
        return (f"SVHN is not available here ({err.message}); get it with `aae-pipeline data prepare svhn` where "
                "the internet is reachable, or put train_32x32.mat and test_32x32.mat in a directory and pass "
                "--svhn svhn:/that/dir")
    return None


def row(experiment: Experiment, run_dir: Path, attempt: dict[str, Any]) -> dict[str, Any]:
    """One table row from what the run directory holds now."""
    manifest = RunDir(run_dir).read_manifest() if (run_dir / "manifest.json").is_file() else {}
    config = manifest.get("config") or {}
    stages = manifest.get("stages") or {}
    # The manifest's stage times survive resumes and reruns of this script; the measured time is a fallback.
    wall_s = sum(stage.get("seconds") or 0 for stage in stages.values()) or attempt.get("wall_s")
    metric = read_metrics(run_dir).get(experiment.metric)
    curve_metric, curve = validation_curve(run_dir)
    return {
        "experiment": experiment.key,
        "setting": experiment.setting,
        "epochs": (config.get("train") or {}).get("epochs"),
        "limit": (config.get("data") or {}).get("limit"),
        "metric": experiment.metric,
        "ours": metric,
        "paper": experiment.paper,
        "wall_s": wall_s,
        "device": attempt.get("device"),
        "curve_metric": curve_metric,
        "curve": curve,
        "command": attempt.get("command"),
        "run_dir": str(run_dir),
        "returncode": attempt.get("returncode"),
        "status": attempt.get("status") or (
            "failed" if attempt.get("returncode") else "unfinished" if metric is None else "ok"),
    }


def validation_curve(run_dir: Path) -> tuple[str | None, list[list[float]]]:
    """The run's validation metric by epoch, [[epoch, value], ...]: the error where it has labels or clusters,
    else the reconstruction BCE (what the run ranks its checkpoints by)."""
    from pipeline.loop import VALIDATION_METRICS  # pipeline.loop imports torch: kept out of start-up

    rows = RunDir(run_dir).read_metrics() if (run_dir / "metrics.jsonl").is_file() else []
    key = next((key for key in VALIDATION_METRICS if rows and key in rows[-1]), None)
    return key, [[row["epoch"], row[key]] for row in rows if key in row] if key else []


def curves_dir(results: Path) -> Path:
    return results.with_name(f"{results.stem}-curves")


def draw_curve(r: dict[str, Any], path: Path) -> None:
    """One row's validation curve as a small PNG (written then renamed, as the table is)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs, values = zip(*r["curve"], strict=True)
    fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
    ax.plot(epochs, values)
    ax.set(xlabel="epoch", ylabel=r["curve_metric"], title=f"{r['experiment']}: {r['setting']}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    fig.savefig(partial, format="png")
    plt.close(fig)
    partial.replace(path)


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """The results as a markdown table, with how they were produced."""
    lines = [
        "# The paper's experiments, reproduced",
        "",
        "Written by `benchmarks/reproduce.py`. Errors are test-set percentages (lower is better); the Parzen",
        "log-likelihood is in nats on the MNIST test set (higher is better). Paper: Makhzani et al. 2015.",
        f"Runs: `{args.out_dir}`; {args.workers} worker(s){'; data.limit=' + str(args.limit) if args.limit else ''}.",
        "",
        "| experiment | setting | epochs | ours | paper | curve | device | wall time | command |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    curves = curves_dir(args.results).name
    for r in rows:
        ours = "—" if r["ours"] is None else f"{r['ours']:.2f}"
        if r["status"] != "ok":
            ours += f" ({r['status']})"
        wall = "—" if not r["wall_s"] else f"{r['wall_s'] / 60:.1f} min"
        command = f"`{r['command']}`" if r["command"] else "—"
        epochs = "—" if r["epochs"] is None else f"{r['epochs']}" + (f" (limit {r['limit']})" if r["limit"] else "")
        curve = f"[{len(r['curve'])} epochs]({curves}/{r['experiment']}.png)" if r.get("curve") else "—"
        lines.append(f"| {r['experiment']} | {r['setting']} | {epochs} | {ours} | {r['paper']} | {curve} | "
                     f"{r.get('device') or '—'} | {wall} | {command} |")
    return "\n".join(lines) + "\n"


def write_results(attempts: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    """Rebuild the table from every run under --out-dir (this call's and earlier ones'). A row recorded
    earlier whose run directory is not here (another machine, or deleted) is kept as it was recorded."""
    earlier = _earlier_rows(args.results.with_suffix(".json"))
    keep = ("command", "wall_s", "returncode", "device")
    rows = []
    for experiment in EXPERIMENTS:
        run_dir = (args.out_dir / experiment.key).resolve()
        recorded = earlier.get(experiment.key, {})
        if experiment.key not in attempts and not (run_dir / "manifest.json").is_file():
            if recorded.get("ours") is not None:
                rows.append(recorded)
            continue
        attempt = attempts.get(experiment.key) or {key: recorded.get(key) for key in keep}
        # A run made by another call of this script (e.g. a parallel one) shows the command that makes it.
        attempt["command"] = attempt.get("command") or shown(cli_args(experiment, args, run_dir, resume=False))
        rows.append(row(experiment, run_dir, attempt))
        metrics, png = run_dir / "metrics.jsonl", curves_dir(args.results) / f"{experiment.key}.png"
        if rows[-1].get("curve") and metrics.is_file() and (
                not png.is_file() or png.stat().st_mtime < metrics.stat().st_mtime):  # drawn once per change
            draw_curve(rows[-1], png)
    notes = _notes_below_table(args.results)
    atomic_write_text(args.results, markdown(rows, args) + (f"\n{notes}" if notes else ""))
    atomic_write_text(args.results.with_suffix(".json"), json.dumps({"rows": rows}, indent=2) + "\n")


def _notes_below_table(path: Path) -> str:
    """What was written below the generated table (from its first `## ` heading on): sections added by hand,
    such as numbers measured elsewhere, that a rebuild of the table must keep."""
    if not path.is_file():
        return ""
    lines = path.read_text().splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.startswith("## ")), len(lines))
    return "".join(lines[start:])


def _earlier_rows(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        return {}
    return {r["experiment"]: r for r in json.loads(path.read_text()).get("rows", [])}


def aae_pipeline_command() -> list[str]:
    """How to run the CLI here: the installed command, or this checkout's `python -m pipeline.cli` (a copied tree
    without an install, as on a GPU machine set up by hand)."""
    beside = Path(sys.executable).parent / "aae-pipeline"
    installed = str(beside) if beside.exists() else shutil.which("aae-pipeline")
    if installed:
        return [installed]
    if (ROOT / "pipeline" / "cli.py").is_file():
        return [sys.executable, "-m", "pipeline.cli"]
    sys.exit("error: the aae-pipeline command is not installed; run `pip install -e .` first")


def main(argv: list[str] | None = None) -> int:
    """Run the selected experiments, --parallel at a time, until they are done or --minutes is up; exit 1 if
    any failed."""
    args = parse_args(argv)
    if args.parallel < 1:
        sys.exit("error: --parallel must be at least 1")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    cli = aae_pipeline_command()
    device = device_name(args)
    deadline = None if args.minutes is None else time.monotonic() + 60 * args.minutes
    waiting, training = select(args.only), []
    attempts: dict[str, dict[str, Any]] = {}
    on_sigterm = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        while waiting or training:
            while waiting and len(training) < args.parallel and (deadline is None or time.monotonic() < deadline):
                experiment = waiting.pop(0)
                started = start(experiment, args, cli)
                if isinstance(started, Training):
                    training.append(started)
                elif started is not None:
                    attempts[experiment.key] = started
                    write_results(attempts, args)
            for row_training in [t for t in training if t.process.poll() is not None]:
                training.remove(row_training)
                attempts[row_training.experiment.key] = collect(row_training, args, device)
                write_results(attempts, args)
            if deadline is not None and time.monotonic() >= deadline:
                stop(training)
                for row_training in training:
                    attempts[row_training.experiment.key] = collect(row_training, args, device, stopped=True)
                training = []
                if waiting:
                    print(f"time is up ({args.minutes:g} min); not started: {' '.join(e.key for e in waiting)}")
                waiting = []
            time.sleep(0.5)
    finally:  # Ctrl-C, SIGTERM or an error here: the rows' runs stop with their checkpoints kept
        stop(training)
        signal.signal(signal.SIGTERM, on_sigterm)
    write_results(attempts, args)
    print(f"results: {args.results} (and {args.results.with_suffix('.json').name})")
    return 1 if any(attempt["returncode"] for attempt in attempts.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
