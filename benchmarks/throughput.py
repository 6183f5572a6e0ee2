"""Training throughput of `aae-pipeline run` against a bare single-process loop, and Ray's fixed overhead.

    python benchmarks/throughput.py [--limit 10000] [--epochs 3] [--steps 200]

Everything is measured in one invocation, so the ratios compare like with like on a shared machine.
The bare loop calls the same aae model's training_step on batches of the same size, with no Ray, no
sharding and no checkpoints. `run` is the real pipeline (prepare → train stages, Ray Train workers).
Results: benchmarks/results/throughput.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from aae.batch import Batch
from pipeline.chain import run_chain
from pipeline.config import load_config
from pipeline.data.splits import load_training_data
from pipeline.loop import build_training_model
from pipeline.ray import cluster
from pipeline.rundir import RunDir

RESULTS = Path(__file__).parent / "results"
# On a 2-core machine more workers cannot be faster than one; four (the quickstart's) must keep a third of its pace.
TARGETS = {"one_worker_vs_bare": 0.9, "four_workers_vs_one": 0.3, "overhead_s": 20.0}


def bare_loop(limit: int, steps: int) -> float:
    """Examples/s of the semisup model's training_step in a plain loop (all cores, batch 100)."""
    torch.set_num_threads(os.cpu_count() or 1)
    config = load_config("semisup", [f"data.limit={limit}"])
    data = load_training_data(config)
    torch.manual_seed(0)
    model = build_training_model(config, data)
    batch_size, warmup = config.train.batch_size, 10
    generator = torch.Generator().manual_seed(0)
    started = 0.0
    for step in range(steps + warmup):
        if step == warmup:
            started = time.perf_counter()
        idx = torch.randint(len(data.x), (batch_size,), generator=generator)
        lab = data.labelled[torch.randint(len(data.labelled), (batch_size,), generator=generator)]
        model.training_step(Batch(x=data.x[idx], y=data.y[idx], x_labelled=data.x[lab], y_labelled=data.y[lab]))
    return steps * batch_size / (time.perf_counter() - started)


def pipeline_run(limit: int, epochs: int, workers: int) -> dict[str, float]:
    """Examples/s of `run` (median over epochs after the first) and its fixed start-up/teardown cost."""
    with tempfile.TemporaryDirectory() as tmp:
        flags = {"run.workers": workers, "train.epochs": epochs, "tracking.wandb": "disabled"}
        config = load_config("semisup", [f"data.limit={limit}"], flags)
        run = RunDir(Path(tmp) / "run")
        started = time.perf_counter()
        run_chain(config, run, stages=("prepare", "train"))
        cluster.shutdown()
        wall = time.perf_counter() - started
        rows = run.read_metrics()
        prepare_s = run.read_manifest()["stages"]["prepare"]["seconds"]
    steady = [row["time/examples_per_s"] for row in rows[1:]] or [rows[0]["time/examples_per_s"]]
    return {
        "examples_per_s": statistics.median(steady),
        "wall_s": wall,
        "epochs_s": sum(row["time/epoch_s"] for row in rows),
        "overhead_s": wall - sum(row["time/epoch_s"] for row in rows) - prepare_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=10_000, help="training examples per epoch")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200, help="bare-loop steps timed")
    args = parser.parse_args()

    bare = bare_loop(args.limit, args.steps)
    one = pipeline_run(args.limit, args.epochs, workers=1)
    two = pipeline_run(args.limit, args.epochs, workers=2)
    four = pipeline_run(args.limit, args.epochs, workers=4)
    result = {
        "machine": f"{platform.node()} ({os.cpu_count()} cores, {platform.processor() or platform.machine()})",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": f"python benchmarks/throughput.py --limit {args.limit} --epochs {args.epochs} --steps {args.steps}",
        "bare_examples_per_s": round(bare, 1),
        "run_1_worker": {k: round(v, 2) for k, v in one.items()},
        "run_2_workers": {k: round(v, 2) for k, v in two.items()},
        "run_4_workers": {k: round(v, 2) for k, v in four.items()},
        "one_worker_vs_bare": round(one["examples_per_s"] / bare, 3),
        "two_workers_vs_one": round(two["examples_per_s"] / one["examples_per_s"], 3),
        "four_workers_vs_one": round(four["examples_per_s"] / one["examples_per_s"], 3),
        "overhead_s": round(max(one["overhead_s"], two["overhead_s"], four["overhead_s"]), 1),
        "targets": TARGETS,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "throughput.md").write_text(render(result))
    print(render(result))


def render(result: dict) -> str:
    """The results as a markdown table with each target and by how much it was met or missed."""
    def verdict(name: str, value: float) -> str:
        target = TARGETS[name]
        ok = value <= target if name == "overhead_s" else value >= target
        return f"{'met' if ok else 'MISSED'} (target {'<=' if name == 'overhead_s' else '>='} {target})"

    lines = [
        "# Training throughput: `aae-pipeline run` vs a bare loop",
        "",
        f"Machine: {result['machine']}; {result['date']}; command: `{result['command']}`",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        f"| bare single-process loop | {result['bare_examples_per_s']:.0f} ex/s | |",
        f"| run, 1 worker | {result['run_1_worker']['examples_per_s']:.0f} ex/s | |",
        f"| run, 2 workers | {result['run_2_workers']['examples_per_s']:.0f} ex/s | |",
        f"| run, 4 workers | {result['run_4_workers']['examples_per_s']:.0f} ex/s | |",
        f"| 2 workers / 1 worker | {result['two_workers_vs_one']:.2f}x | |",
        *(
            f"| {label} | {result[key]:.2f}{unit} | {verdict(key, result[key])} |"
            for label, key, unit in (
                ("1 worker / bare", "one_worker_vs_bare", "x"),
                ("4 workers / 1 worker", "four_workers_vs_one", "x"),
                ("Ray start-up + teardown per run (slowest)", "overhead_s", " s"),
            )
        ),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
