"""Test-only fault injection: `python -m tests.faults FAULT <aae-pipeline arguments>`.

Runs the real command line with one change, made once: `fault-injected.txt` in the run directory marks it done,
so the restarted training does not fail again. Nothing in pipeline/ knows about it.
- FAULT = EPOCH:STEP:RANK: the Ray Train worker function SIGKILLs its own process at step STEP of epoch EPOCH
  (both 0-based) on rank RANK. The driver swaps in the killing worker function before the TorchTrainer is built,
  and Ray pickles it by value (this file runs as __main__), so workers on other nodes need no copy of the tests.
- FAULT = controller:EPOCH: Ray Train's controller raises after the workers report epoch EPOCH (1-based, as in
  metrics.jsonl), through a callback given to the TorchTrainer, which runs inside the controller.
- FAULT = hold:EPOCH: every in-process Tune trial waits before training epoch EPOCH (0-based) until the file
  `release` exists in the sweep directory, so a test can break the cluster while trials are mid-training
  however fast an epoch is. (The trial function Tune pickles looks `run_trial` up when pickled, so a
  replacement made here travels by value.)
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

        def counting_epoch(model, data, config, ctx, at_epoch, captured=None, **options):  # noqa: ANN001, ANN202
            where.update(epoch=at_epoch, step=0, rank=ctx.rank)
            return train_one_epoch(model, data, config, ctx, at_epoch, captured, **options)

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


def failing_controller(epoch: int, fit: Any) -> Any:
    """pipeline.ray.trainer.fit, but its controller raises once, after the report of `epoch`."""
    from ray.train import UserCallback

    class FailingCallback(UserCallback):
        def __init__(self, marker: str) -> None:
            self.marker = marker

        def after_report(self, run_context: Any, metrics: list[dict], checkpoint: Any) -> None:
            from pathlib import Path

            if metrics[0].get("epoch") == epoch and not Path(self.marker).exists():
                Path(self.marker).write_text(f"the controller failed after epoch {epoch}\n")
                raise RuntimeError("injected controller fault")

    def failing_fit(config: Any, run: Any, plan: Any, name: str = "train", callbacks: list | None = None) -> None:
        fit(config, run, plan, name, [*(callbacks or []), FailingCallback(str(run.path.resolve() / MARKER))])

    return failing_fit


def holding_trial(epoch: int) -> Any:
    """pipeline.ray.tuner.run_trial, but training waits before `epoch` until <sweep>/release exists."""

    def run_trial(params: dict[str, Any], setup: Any) -> None:
        import time
        from pathlib import Path

        from pipeline import loop
        from pipeline.ray import tuner

        release = Path(setup.sweep_dir) / "release"
        train_one_epoch = loop.train_one_epoch

        def holding_epoch(model, data, config, ctx, at_epoch, captured=None, **options):  # noqa: ANN001, ANN202
            deadline = time.monotonic() + 600
            while at_epoch == epoch and not release.exists() and time.monotonic() < deadline:
                time.sleep(0.2)
            return train_one_epoch(model, data, config, ctx, at_epoch, captured, **options)

        # Tune reuses a trial's process for the next trial: wrap the loop's own function, not an earlier wrapper.
        loop.train_one_epoch = holding_epoch
        try:
            tuner.run_trial(params, setup)
        finally:
            loop.train_one_epoch = train_one_epoch

    return run_trial


def main(argv: list[str]) -> None:
    """Install the fault argv[0] names (EPOCH:STEP:RANK, controller:EPOCH or hold:EPOCH) and run the CLI on the
    rest."""
    from pipeline import cli
    from pipeline.ray import trainer, tuner

    kind, _, epoch = argv[0].partition(":")
    if kind == "controller":
        trainer.fit = failing_controller(int(epoch), trainer.fit)
    elif kind == "hold":
        tuner.run_trial = holding_trial(int(epoch))
    else:
        epoch, step, rank = (int(part) for part in argv[0].split(":"))
        trainer.train_worker = killing_worker(epoch, step, rank)
    sys.argv = ["aae-pipeline", *argv[1:]]
    cli.main()


if __name__ == "__main__":
    main(sys.argv[1:])
