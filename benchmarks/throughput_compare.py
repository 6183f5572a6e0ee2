"""Two commits' throughput benchmarks side by side, alternating, so that a slower machine slows both alike.

    python benchmarks/throughput_compare.py OLD [NEW] [--rounds 2] [-- throughput.py arguments]

Checks out OLD and NEW (default HEAD) into temporary git worktrees and runs each one's own
`benchmarks/throughput.py` in turn, OLD, NEW, OLD, NEW…, with the same arguments, in this interpreter's
environment. Each round's numbers come from the results file that commit's benchmark writes. Answers "did the
code or the machine change?": if OLD today measures what NEW does, the machine did.
Results: benchmarks/results/throughput-compare.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
# Keys of throughput.json; a commit whose benchmark lacks one shows —.
MEASURES = {
    "bare loop (ex/s)": ("bare_examples_per_s",),
    "run, 1 worker (ex/s)": ("run_1_worker", "examples_per_s"),
    "run, 2 workers (ex/s)": ("run_2_workers", "examples_per_s"),
    "run, 4 workers (ex/s)": ("run_4_workers", "examples_per_s"),
    "1 worker / bare": ("one_worker_vs_bare",),
    "2 workers / 1 worker": ("two_workers_vs_one",),
    "4 workers / 1 worker": ("four_workers_vs_one",),
    "start-up + teardown, 1 worker (s)": ("run_1_worker", "overhead_s"),
    "start-up + teardown, 2 workers (s)": ("run_2_workers", "overhead_s"),
    "start-up + teardown, 4 workers (s)": ("run_4_workers", "overhead_s"),
}


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True).stdout.strip()


def measure(worktree: Path, arguments: list[str]) -> dict:
    """One run of the worktree's own benchmark, on its own code; the results file it wrote."""
    env = {**os.environ, "PYTHONPATH": str(worktree)}
    subprocess.run([sys.executable, "benchmarks/throughput.py", *arguments], cwd=worktree, env=env, check=True)
    return json.loads((worktree / "benchmarks" / "results" / "throughput.json").read_text())


def pick(result: dict, path: tuple[str, ...]) -> float | None:
    for key in path:
        if not isinstance(result, dict) or key not in result:
            return None
        result = result[key]
    return float(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old", help="the earlier commit")
    parser.add_argument("new", nargs="?", default="HEAD", help="the later commit (default HEAD)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each commit, alternating")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args, arguments = parser.parse_args(argv[:split]), argv[split + 1:]  # after --: throughput.py's arguments
    commits = {name: git("rev-parse", "--short", rev) for name, rev in (("old", args.old), ("new", args.new))}

    runs: dict[str, list[dict]] = {"old": [], "new": []}
    with tempfile.TemporaryDirectory(prefix="aae-compare-") as tmp:
        trees = {name: Path(tmp) / name for name in commits}
        for name, commit in commits.items():
            git("worktree", "add", "--detach", str(trees[name]), commit)
        try:
            for round_ in range(args.rounds):
                for name in ("old", "new"):
                    print(f"round {round_ + 1}/{args.rounds}: {name} ({commits[name]})", flush=True)
                    runs[name].append(measure(trees[name], arguments))
        finally:
            for tree in trees.values():
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)

    table = {label: {name: [pick(run, path) for run in runs[name]] for name in runs}
             for label, path in MEASURES.items()}
    result = {
        "machine": f"{platform.node()} ({os.cpu_count()} cores, {platform.processor() or platform.machine()})",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": f"python benchmarks/throughput_compare.py {args.old} {args.new} --rounds {args.rounds}"
                   + (f" -- {' '.join(arguments)}" if arguments else ""),
        "commits": commits,
        "measures": table,
        "runs": runs,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "throughput-compare.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "throughput-compare.md").write_text(render(result))
    print(render(result))


def render(result: dict) -> str:
    """Each measure for both commits: every round's value and the median."""
    def cell(values: list[float | None]) -> str:
        known = [v for v in values if v is not None]
        if not known:
            return "—"
        return f"{statistics.median(known):.2f} ({', '.join(f'{v:.2f}' for v in known)})"

    old, new = result["commits"]["old"], result["commits"]["new"]
    lines = [
        "# Throughput of two commits, measured alternately in one invocation",
        "",
        f"Machine: {result['machine']}; {result['date']}; command: `{result['command']}`",
        "",
        f"Median (each round) of `benchmarks/throughput.py` as each commit has it: old {old}, new {new}.",
        "",
        f"| measure | old {old} | new {new} |",
        "|---|---|---|",
        *(f"| {label} | {cell(values['old'])} | {cell(values['new'])} |"
          for label, values in result["measures"].items()),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
