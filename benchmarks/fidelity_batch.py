"""Many fidelity experiments side by side: each line of a jobs file is one `benchmarks/fidelity.py` call.

    python benchmarks/fidelity_batch.py benchmarks/fidelity_jobs/gpu-h100.txt --parallel 5 --minutes 8 \\
        --log-dir /tmp/fidelity-logs -- --device cuda --threads 2 --results /tmp/fidelity-gpu.jsonl

Blank lines and lines starting with # are skipped. The arguments after `--` go to every job. No job starts
once fewer than --min-left seconds remain of --minutes; jobs still running at the end are stopped (their
row is lost, their log kept), so a time-limited budget (a lent GPU) always ends with the finished rows.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

FIDELITY = Path(__file__).resolve().parent / "fidelity.py"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("jobs", type=Path, help="one fidelity.py argument line per job")
    parser.add_argument("--parallel", type=int, default=2, help="jobs running at once")
    parser.add_argument("--minutes", type=float, default=60.0, help="the whole batch's time")
    parser.add_argument("--min-left", type=float, default=90.0, help="seconds a job needs to be worth starting")
    parser.add_argument("--log-dir", type=Path, default=Path("fidelity-logs"))
    args, common = parser.parse_known_args()
    common = [arg for arg in common if arg != "--"]
    jobs = [shlex.split(line) for line in args.jobs.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]
    args.log_dir.mkdir(parents=True, exist_ok=True)
    sys.exit(run_batch(jobs, common, args.parallel, 60 * args.minutes, args.min_left, args.log_dir))


def run_batch(jobs: list[list[str]], common: list[str], parallel: int, seconds: float, min_left: float,
              log_dir: Path) -> int:
    """Run the jobs, `parallel` at a time, inside `seconds`; returns how many did not finish cleanly."""
    started = time.monotonic()
    pending = list(enumerate(jobs, 1))
    running: dict[int, tuple[subprocess.Popen, IO[str]]] = {}
    failed = 0
    while pending or running:
        left = seconds - (time.monotonic() - started)
        while pending and len(running) < parallel and left > min_left:
            number, job = pending.pop(0)
            log = (log_dir / f"job{number:02d}.log").open("w")
            process = subprocess.Popen([sys.executable, str(FIDELITY), *job, *common], stdout=log,
                                       stderr=subprocess.STDOUT)
            running[number] = (process, log)
            _say(started, f"job {number} started: {shlex.join(job)}")
        if left <= min_left and pending:
            _say(started, f"{len(pending)} jobs not started: out of time")
            pending.clear()
        for number, (process, log) in list(running.items()):
            if process.poll() is None and left <= 0:
                process.terminate()
                process.wait()
                _say(started, f"job {number} stopped: out of time")
                failed += 1
            elif process.poll() is not None:
                failed += process.returncode != 0
                _say(started, f"job {number} ended with exit {process.returncode}")
            else:
                continue
            log.close()
            del running[number]
        time.sleep(1)
    return failed


def _say(started: float, message: str) -> None:
    print(f"[{time.monotonic() - started:6.0f}s] {message}", flush=True)


if __name__ == "__main__":
    main()
