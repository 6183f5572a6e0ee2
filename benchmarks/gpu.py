"""GPU speed of training: eager steps against CUDA-graph replays, bf16 against fp32, the learning curve of
both paths, trials packed onto one GPU (a process each, or several in one process), `run` end to end through
Ray Train, and Tune sweeps with --gpus-per-trial and --trials-per-process. One invocation, so the ratios
compare like with like:

    python benchmarks/gpu.py [--out benchmarks/results] [--budget-s 480]

Needs CUDA and the prepared MNIST (`aae-pipeline data prepare mnist`); without CUDA it says so and exits 2.
Writes gpu-<device>.json and gpu-<device>.md to --out, after every section (a section that fails is recorded
with its error and the rest go on; sections that would start past --budget-s are skipped and listed).
`--device cpu --limit 2000` runs the same sections on the CPU, to check the script itself, not to measure.
`--only "loop,run"` runs some sections; `--merge OLD.json` keeps the other sections' rows from an earlier call
(a GPU lent for a few minutes at a time: the whole benchmark took about 330 s on an H200).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from pipeline.config import load_config  # noqa: E402
from pipeline.data.splits import load_training_data  # noqa: E402
from pipeline.loop import WorkerContext, build_training_model, make_batch, train_loop  # noqa: E402
from pipeline.rundir import RunDir  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TARGET_EXAMPLES_PER_S = 50_000  # the goal: <= 1.0 s per semisup epoch through run
TODAY_EXAMPLES_PER_S = 7_000  # eager, through Ray Train on an H100: what CUDA graphs are measured against


class Bench:
    """Collects rows and writes the results after every section."""

    def __init__(self, out: Path, device: str, limit: int | None, budget_s: float) -> None:
        self.out, self.device, self.limit, self.budget_s = out, device, limit, budget_s
        self.started = time.perf_counter()
        self.work = Path(tempfile.mkdtemp(prefix="aae-gpu-bench-"))
        name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu"
        self.slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        self.meta = {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda,
                     "driver": _driver_version(), "python": platform.python_version(),
                     "limit": limit, "date": time.strftime("%Y-%m-%d %H:%M")}
        self.rows: list[dict[str, Any]] = []
        self.errors: dict[str, str] = {}
        self.skipped: list[str] = []
        self.runs = 0

    def left_s(self) -> float:
        return self.budget_s - (time.perf_counter() - self.started)

    def overrides(self, *extra: str) -> list[str]:
        base = ["tracking.wandb=disabled", f"run.gpus_per_worker={1 if self.device == 'cuda' else 0}"]
        return base + ([f"data.limit={self.limit}"] if self.limit else []) + list(extra)

    def train(self, experiment: str, epochs: int, *extra: str) -> list[dict[str, Any]]:
        """The project's training loop in this process (no Ray): per-epoch metrics, timings included."""
        config = load_config(experiment, self.overrides(f"train.epochs={epochs}", *extra))
        self.runs += 1
        run = RunDir(self.work / f"run-{self.runs}")
        run.path.mkdir(parents=True)
        train_loop(config, run, WorkerContext(device=torch.device(self.device)))
        return run.read_metrics()

    def add(self, section: str, what: str, **values: Any) -> None:
        row = {"section": section, "what": what, **values}
        self.rows.append(row)
        print(json.dumps(row), flush=True)

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        payload = {**self.meta, "elapsed_s": round(time.perf_counter() - self.started, 1), "rows": self.rows,
                   "errors": self.errors, "skipped": self.skipped}
        (self.out / f"gpu-{self.slug}.json").write_text(json.dumps(payload, indent=2) + "\n")
        (self.out / f"gpu-{self.slug}.md").write_text(markdown(payload))


def _driver_version() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def speed(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Steady-state training speed: the median epoch after the first (which warms up and captures)."""
    steady = rows[1:] or rows
    train_s = statistics.median(row["time/train_s"] for row in steady)
    return {"s_per_epoch": round(train_s, 3),
            "examples_per_s": round(statistics.median(row["time/examples_per_s"] for row in steady)),
            "first_epoch_s": rows[0]["time/train_s"], "epochs": len(rows),
            "cuda_graphs": rows[-1].get("time/cuda_graphs")}


# -- sections ------------------------------------------------------------------------------------------------
def eager_vs_graphs(bench: Bench) -> None:
    """The loop alone, data on the device: eager steps, then replays of captured steps."""
    for experiment in ("semisup", "cluster16"):
        for label, flags in (("eager", ["run.cuda_graphs=false"]), ("cuda graphs", ["run.cuda_graphs=true"])):
            epochs = 3 if label == "eager" else 4
            rows = bench.train(experiment, epochs, "run.data_on_device=true", *flags)
            bench.add("loop", f"{experiment}: {label}", experiment=experiment, **speed(rows))
        bench.write()


def bf16_vs_fp32(bench: Bench) -> None:
    """run.amp (bf16 autocast) against fp32, on both paths."""
    for label, flags in (("cuda graphs, bf16", ["run.amp=true"]),
                         ("eager, bf16", ["run.amp=true", "run.cuda_graphs=false", "run.data_on_device=true"])):
        rows = bench.train("semisup", 4 if "graphs" in label else 3, *flags)
        bench.add("amp", f"semisup: {label}", **speed(rows))


def learning_curves(bench: Bench, epochs: int = 10) -> None:
    """Semisup with 1000 labels, same seed: the validation error of both paths, epoch by epoch."""
    curves = {}
    for label, flags in (("cuda graphs", ["run.cuda_graphs=true"]),
                         ("eager", ["run.cuda_graphs=false", "run.data_on_device=true"])):
        rows = bench.train("semisup", epochs, "data.labels=1000", *flags)
        curves[label] = [round(row["val/error"], 2) for row in rows]
        bench.add("curve", f"semisup-1000, {epochs} epochs: {label}", val_error=curves[label],
                  recon_loss=[round(row["train/recon_loss"], 3) for row in rows], **speed(rows))
    gaps = [abs(a - b) for a, b in zip(*curves.values(), strict=False)]
    bench.add("curve", "largest gap between the two curves (points of validation error)",
              max_gap=round(max(gaps), 2) if gaps else None, final_gap=round(gaps[-1], 2) if gaps else None)


def packed_trials(bench: Bench) -> None:
    """N processes of the loop (CUDA graphs) sharing one GPU: the throughput of a sweep packed onto it."""
    for count in (1, 2, 4, 8):
        if bench.left_s() < 60:
            bench.skipped.append(f"packed trials: {count}")
            continue
        outs = [bench.work / f"packed-{count}-{i}.json" for i in range(count)]
        env = {**os.environ, "OMP_NUM_THREADS": "2"}
        started = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, __file__, "trial", "--out", str(out), "--device", bench.device,
                                   *(["--limit", str(bench.limit)] if bench.limit else [])], env=env)
                 for out in outs]
        try:
            codes = [proc.wait(timeout=max(60.0, bench.left_s())) for proc in procs]
        finally:  # a timeout must not leave trial processes holding the GPU
            for proc in procs:
                proc.kill()
        wall = time.perf_counter() - started
        if any(codes):
            raise RuntimeError(f"{sum(1 for c in codes if c)} of {count} trial processes failed")
        speeds = [json.loads(out.read_text()) for out in outs]
        total = sum(s["examples_per_s"] for s in speeds)
        bench.add("packed", f"{count} trial process(es) on one GPU", processes=count,
                  examples_per_s_each=round(total / count), examples_per_s_together=round(total),
                  wall_s=round(wall, 1), cuda_graphs=min(s["cuda_graphs"] or 0 for s in speeds))
        bench.write()


def trials_per_process(bench: Bench, epochs: int = 4) -> None:
    """K semisup trials (seeds 0..K-1) trained in one process (pipeline.pack, what `tune --trials-per-process K`
    runs): the examples/s of all of them together, from the wall time of each round after the first, and whether
    trial 0's curve is the one it trains alone. The rates decay after epoch 2, so each trial captures its step
    again while the others replay theirs."""
    from pipeline.pack import TrainingPack

    settings = ("data.labels=1000", "train.decay_epochs=[2]")
    alone = [row["val/error"] for row in bench.train("semisup", epochs, *settings)]
    for count in (2, 4, 8):
        if bench.left_s() < 60:
            bench.skipped.append(f"trials per process: {count}")
            continue
        pack = TrainingPack(torch.device(bench.device))
        runs = []
        for seed in range(count):
            bench.runs += 1
            run = RunDir(bench.work / f"run-{bench.runs}")
            run.path.mkdir(parents=True)
            config = load_config("semisup", bench.overrides(f"train.epochs={epochs}", *settings, f"train.seed={seed}"))
            pack.add(str(seed), config, run)
            runs.append(run)
        rounds = []
        for _ in range(epochs):
            started = time.perf_counter()
            pack.train_round()
            rounds.append(time.perf_counter() - started)
        curves = [run.read_metrics() for run in runs]
        examples = sum(int(rows[0]["time/examples_per_s"] * rows[0]["time/train_s"]) for rows in curves)
        steady = statistics.median(rounds[1:])
        bench.add("trials-per-process", f"{count} semisup trials in one process on one GPU", trials=count,
                  s_per_round=round(steady, 3), examples_per_s_together=round(examples / steady),
                  first_round_s=round(rounds[0], 1), cuda_graphs=curves[0][-1].get("time/cuda_graphs"),
                  same_curve_as_alone=[row["val/error"] for row in curves[0]] == alone)
        bench.write()


def trial_main(args: argparse.Namespace) -> None:
    """One packed trial: 4 epochs of semisup, its steady speed written to --out."""
    torch.set_num_threads(2)
    bench = Bench(Path(args.out).parent, args.device, args.limit, budget_s=1e9)
    Path(args.out).write_text(json.dumps(speed(bench.train("semisup", 4))))


def kernel_profile(bench: Bench) -> None:
    """What a step is made of on the GPU: kernels per step and their summed device time (eager steps)."""
    from torch.profiler import ProfilerActivity, profile

    config = load_config("semisup", bench.overrides())
    device = torch.device(bench.device)
    data = load_training_data(config, device)
    torch.manual_seed(0)
    model = build_training_model(config, data).to(device)
    rows = torch.randperm(len(data.x), device=device)[:100]
    labelled = data.labelled[:100]
    for _ in range(5):
        model.training_step(make_batch(model, data, rows, labelled))
    steps = 20
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if bench.device == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            model.training_step(make_batch(model, data, rows, labelled))
        if bench.device == "cuda":
            torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type.name == "CUDA"]
    device_us = sum(e.device_time for e in kernels) if kernels else 0.0
    bench.add("profile", "semisup, one eager step", kernels_per_step=round(len(kernels) / steps),
              kernel_time_us_per_step=round(device_us / steps, 1),
              top_kernels=_top_kernels(kernels, steps))


def _top_kernels(kernels: list[Any], steps: int) -> list[str]:
    totals: dict[str, list[float]] = {}
    for event in kernels:
        totals.setdefault(event.name[:60], []).append(event.device_time)
    ranked = sorted(totals.items(), key=lambda item: -sum(item[1]))[:6]
    return [f"{name}: {len(times) / steps:.0f}/step, {sum(times) / steps:.0f} us/step" for name, times in ranked]


def run_end_to_end(bench: Bench) -> None:
    """`aae-pipeline run semisup --gpus-per-worker 1` through Ray Train: epoch times from its metrics."""
    run_dir = bench.work / "cli-run"
    command = [sys.executable, "-m", "pipeline.cli", "run", "semisup", "--workers", "1", "--gpus-per-worker",
               "1" if bench.device == "cuda" else "0", "--epochs", "5", "--wandb", "disabled", "--run-dir",
               str(run_dir), *(["--set", f"data.limit={bench.limit}"] if bench.limit else [])]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=max(60.0, bench.left_s()))
    wall = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(f"run exited {done.returncode}: {(done.stderr or done.stdout)[-2000:]}")
    rows = RunDir(run_dir).read_metrics()
    bench.add("run", "aae-pipeline run semisup --gpus-per-worker 1 --epochs 5 (Ray Train)", wall_s=round(wall, 1),
              **speed(rows))


def tune_packed(bench: Bench) -> None:
    """`aae-pipeline tune semisup` with four trials at once on one GPU: a process each (`--gpus-per-trial 0.25`),
    then all four in one process (`--trials-per-process 4`)."""
    on_gpu = bench.device == "cuda"
    for flags in (["--gpus-per-trial", "0.25"] if on_gpu else ["--max-concurrent", "2"],
                  ["--trials-per-process", "4", *(["--gpus-per-trial", "1"] if on_gpu else [])]):
        if bench.left_s() < 60:
            bench.skipped.append(f"tune {' '.join(flags)}")
            continue
        sweep = bench.work / f"sweep{flags[0]}"
        command = [sys.executable, "-m", "pipeline.cli", "tune", "semisup", "--samples", "4", "--epochs", "3",
                   "--scheduler", "fifo", "--sweep-dir", str(sweep), "--wandb", "disabled", *flags,
                   *(["--set", f"data.limit={bench.limit}"] if bench.limit else [])]
        started = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=max(60.0, bench.left_s()))
        wall = time.perf_counter() - started
        if done.returncode:
            raise RuntimeError(f"tune exited {done.returncode}: {(done.stderr or done.stdout)[-2000:]}")
        trials = [RunDir(path).read_metrics() for path in sorted((sweep / "trials").iterdir()) if path.is_dir()]
        each = [speed(rows)["examples_per_s"] for rows in trials if rows]
        bench.add("tune", f"aae-pipeline tune semisup {' '.join(flags)} --samples 4 --epochs 3",
                  wall_s=round(wall, 1), trials=len(each), examples_per_s_each=each,
                  examples_per_s_together=sum(each))
        bench.write()


SECTIONS: list[tuple[str, Callable[[Bench], None]]] = [
    ("loop", eager_vs_graphs),
    ("profile", kernel_profile),
    ("curve", learning_curves),
    ("run", run_end_to_end),
    ("amp", bf16_vs_fp32),
    ("packed", packed_trials),
    ("trials-per-process", trials_per_process),
    ("tune", tune_packed),
]


def markdown(payload: dict[str, Any]) -> str:
    lines = [f"# GPU training speed: {payload['device']}", "",
             f"torch {payload['torch']}, CUDA {payload['cuda']}, driver {payload['driver']}, "
             f"Python {payload['python']}; {payload['date']}; `python benchmarks/gpu.py` "
             f"({payload['elapsed_s']} s). Full MNIST unless a limit is given (limit: {payload['limit']}); "
             "batch 100; s/epoch is the median training time of the epochs after the first (the first warms "
             "up and captures; its time is listed too).", "",
             "| section | what | s/epoch | examples/s | first epoch s | CUDA graphs | more |",
             "|---|---|---|---|---|---|---|"]
    for row in payload["rows"]:
        known = {"section", "what", "s_per_epoch", "examples_per_s", "first_epoch_s", "cuda_graphs", "epochs",
                 "experiment"}
        more = "; ".join(f"{k}: {v}" for k, v in row.items() if k not in known)
        lines.append(f"| {row['section']} | {row['what']} | {row.get('s_per_epoch', '')} | "
                     f"{row.get('examples_per_s', '')} | {row.get('first_epoch_s', '')} | "
                     f"{row.get('cuda_graphs', '')} | {more} |")
    for note in payload.get("notes", []):
        lines += ["", note]
    if payload["errors"]:
        lines += ["", "## Sections that failed", ""]
        lines += [f"- {name}: `{error.strip().splitlines()[-1]}`" for name, error in payload["errors"].items()]
    if payload["skipped"]:
        lines += ["", f"Skipped for time: {', '.join(payload['skipped'])}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", default="bench", choices=["bench", "trial"])
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--limit", type=int, default=None, help="training examples (default: all)")
    parser.add_argument("--budget-s", type=float, default=480.0, help="no section starts after this")
    parser.add_argument("--only", default=None, help="comma-separated section names")
    parser.add_argument("--merge", default=None, help="an earlier results .json: keep its other sections' rows")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device here (torch.cuda.is_available() is False) — run this on a GPU machine; "
              "`--device cpu --limit 2000` only checks the script", file=sys.stderr)
        sys.exit(2)
    if args.mode == "trial":
        trial_main(args)
        return
    bench = Bench(Path(args.out), args.device, args.limit, args.budget_s)
    wanted = None if args.only is None else set(args.only.split(","))
    if args.merge and Path(args.merge).exists():  # e.g. a second, shorter call on the GPU machine
        earlier = json.loads(Path(args.merge).read_text())
        bench.rows = [row for row in earlier["rows"] if wanted is not None and row["section"] not in wanted]
        bench.errors = {k: v for k, v in earlier["errors"].items() if wanted is not None and k not in wanted}
        bench.meta["notes"] = [*earlier.get("notes", []), f"Sections {sorted(wanted or [])} were measured again "
                               f"at {bench.meta['date']}; the other rows come from the call of {earlier['date']}."]
    for name, section in SECTIONS:
        if wanted is not None and name not in wanted:
            continue
        if bench.left_s() <= 0:
            bench.skipped.append(name)
            continue
        started = time.perf_counter()
        try:
            section(bench)
        except Exception:  # noqa: BLE001 - one failed section must not lose the others' numbers
            bench.errors[name] = traceback.format_exc()
            print(f"section {name} failed:\n{bench.errors[name]}", file=sys.stderr, flush=True)
        print(f"section {name}: {time.perf_counter() - started:.0f} s", flush=True)
        bench.write()
    print(f"results: {bench.out / f'gpu-{bench.slug}.md'}")


if __name__ == "__main__":
    main()
