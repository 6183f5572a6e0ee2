"""Test-only fault injection: `python -m tests.faults EPOCH:STEP:RANK <aae-pipeline arguments>`.

Runs the real command line with one change: the Ray Train worker function SIGKILLs its own process once, at
step STEP of epoch EPOCH (both 0-based) on rank RANK, leaving `fault-injected.txt` in the run directory so the
restarted worker group does not die again. Nothing in pipeline/ knows about it: the driver swaps in the killing
worker function before the TorchTrainer is built, and Ray pickles it by value (this file runs as __main__), so
workers on other nodes need no copy of the tests.
"""

from __future__ import annotations

import sys
from typing import Any

MARKER = "fault-injected.txt"


def killing_worker(epoch: int, step: int, rank: int) -> Any:
    """pipeline.ray.trainer.train_worker, but the worker at (epoch, step, rank) kills itself, once."""

    def train_worker(loop_config: dict[str, Any]) -> None:
        import os
        import signal
        from pathlib import Path

        from pipeline import loop
        from pipeline.ray import trainer

        marker = Path(loop_config["run_dir"]) / MARKER
        where = {"epoch": -1, "step": 0, "rank": -1}
        train_one_epoch, make_batch = loop.train_one_epoch, loop.make_batch

        def counting_epoch(model, data, config, ctx, at_epoch, captured=None):  # noqa: ANN001, ANN202
            where.update(epoch=at_epoch, step=0, rank=ctx.rank)
            return train_one_epoch(model, data, config, ctx, at_epoch, captured)

        def killing_batch(*args):  # noqa: ANN002, ANN202 — make_batch runs once per training step
            if (where["epoch"], where["step"], where["rank"]) == (epoch, step, rank) and not marker.exists():
                marker.write_text(f"killed rank {rank} at epoch {epoch} step {step}\n")
                os.kill(os.getpid(), signal.SIGKILL)
            where["step"] += 1
            return make_batch(*args)

        # This worker process's own copy of the loop module: the loop looks both names up at call time.
        loop.train_one_epoch, loop.make_batch = counting_epoch, killing_batch
        trainer.train_worker(loop_config)

    return train_worker


def main(argv: list[str]) -> None:
    """Install the killing worker for argv[0] = EPOCH:STEP:RANK and run the CLI on the remaining arguments."""
    from pipeline import cli
    from pipeline.ray import trainer

    epoch, step, rank = (int(part) for part in argv[0].split(":"))
    trainer.train_worker = killing_worker(epoch, step, rank)
    sys.argv = ["aae-pipeline", *argv[1:]]
    cli.main()


if __name__ == "__main__":
    main(sys.argv[1:])
