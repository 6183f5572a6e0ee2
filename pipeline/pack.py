"""Several runs trained in one process, an epoch of each in turn: the trials of a sweep sharing one worker
(`aae-pipeline tune --trials-per-process K`). It knows nothing of Ray; pipeline.ray.packs hosts one per actor.

Each member is a pipeline.loop.Training with its own model, optimisers, RNG, data and run directory, so it
trains exactly the numbers it would alone (tests/pipeline/test_pack.py). On the CPU the members take turns.
On a GPU each member replays its steps on its own CUDA stream, from its own thread: one process then keeps
several trials' small kernels in flight at once, where trials in separate processes take turns on the card.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from pipeline.config import Config
from pipeline.loop import ReportFn, Training, WorkerContext
from pipeline.rundir import RunDir


@dataclass(eq=False)  # train_round tells members apart by identity, not by comparing their fields
class Member:
    """One run in the pack, and the CUDA stream its epochs run on (None on the CPU)."""

    training: Training
    stream: Any = None


class TrainingPack:
    """Runs joined with add() and left with remove(); train_round() trains one epoch of each."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.members: dict[str, Member] = {}

    def add(self, name: str, config: Config, run: RunDir, report: ReportFn | None = None) -> Training:
        """Build (or restore from its run directory) the run `name` and train it from the next round on."""
        training = Training(config, run, WorkerContext(device=self.device), report)
        stream = None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # what was built on the default stream is ready for the member's
            stream = torch.cuda.Stream(self.device)
        self.members[name] = Member(training, stream)
        return training

    def remove(self, name: str) -> None:
        """Stop training `name` (absent names are ignored); its checkpoints stay in its run directory."""
        member = self.members.pop(name, None)
        if member is not None:
            member.training.finish()

    def train_round(self) -> list[str]:
        """One epoch of every member not yet done; returns the names that are done after it (they stay members
        until removed)."""
        active = [m for m in self.members.values() if not m.training.done]
        together = [m for m in active if m.stream is not None and _warm(m.training)]
        # A member's first CUDA epoch warms up under torch's process-wide sync debug mode, which would report
        # the other members' reads as its own: it trains alone, before the rest.
        for member in active:
            if member not in together or len(together) == 1:
                _train_epoch(member)
        if len(together) > 1:
            with ThreadPoolExecutor(len(together)) as pool:
                for future in [pool.submit(_train_epoch, m) for m in together]:
                    future.result()
        return [name for name, m in self.members.items() if m.training.done]


def _warm(training: Training) -> bool:
    return training.captured is None or training.captured.warm


def _train_epoch(member: Member) -> None:
    with torch.cuda.stream(member.stream) if member.stream is not None else nullcontext():
        member.training.train_epoch()
