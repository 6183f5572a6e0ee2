"""`tune --trials-per-process K`: up to K trials trained in one process (a pipeline.pack.TrainingPack in a Ray
actor), while Tune still samples, schedules, ranks, stops and records every trial on its own.

A trial's function holds no CPU. It asks the sweep's registry (a named actor the driver starts) for a pack with
a free place, joins it, then reports each epoch the pack trains for it, as an in-process trial reports its own.
A pack holds what one trial's worker would (its CPUs, its share of a GPU) and trains a round, one epoch of every
member, once each member has asked for its next epoch. When Tune ends a trial (finished, stopped by the
scheduler, failed), the driver's PackReleaser tells the registry, which takes the trial out of its pack and ends
a pack left empty, so a new trial can have its place.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.tune import Callback

from pipeline.config import Config
from pipeline.ray.cluster import WorkerResources
from pipeline.rundir import RunDir

REGISTRY_PREFIX = "aae-packs-"
ASSIGN_RETRY_S = 0.5  # how often a trial asks again while every pack is full


@dataclass
class PackPlan:
    """How a sweep packs its trials: places per pack, how many packs may run at once, what each pack holds."""

    per_pack: int
    packs: int
    worker: WorkerResources


class PackActor:
    """One process training its members' epochs in rounds. Its methods run on Ray's threads (a threaded actor);
    the training runs on one thread of its own, which also builds every member, so torch is used from one
    thread (apart from the per-member threads of a GPU round, see pipeline.pack)."""

    def __init__(self, device: str, threads: int) -> None:
        import torch

        from pipeline.pack import TrainingPack

        torch.set_num_threads(threads)
        self.pack = TrainingPack(torch.device(device))
        self.changed = threading.Condition()
        self.joining: dict[str, tuple[Config, str]] = {}
        self.leaving: set[str] = set()
        self.waiting: set[str] = set()  # members that asked for their next epoch
        self.outbox: dict[str, list[dict[str, float]]] = {}  # rows each member reported, not yet fetched
        self.failed: dict[str, str] = {}  # a member that could not be built or trained, and why
        self.broken: str | None = None  # a round that raised: every member's trial fails and tries again elsewhere
        threading.Thread(target=self._train, daemon=True, name="aae-pack").start()

    def ping(self) -> bool:
        """Whether the pack can take members (False once a round failed)."""
        return self.broken is None

    def join(self, name: str, config: Config, run_path: str) -> None:
        """Build (or restore) the trial `name` in this pack; returns once it is a member."""
        with self.changed:
            self.outbox.pop(name, None)  # a trial started again: what its earlier process left is stale
            self.failed.pop(name, None)
            self.joining[name] = (config, run_path)
            self.changed.notify_all()
            self.changed.wait_for(lambda: name in self.outbox or name in self.failed or self.broken is not None)
            self._raise_for(name)

    def next_epoch(self, name: str) -> tuple[list[dict[str, float]], bool]:
        """Wait for the member's next epoch; returns the rows it reported since the last call, and whether its
        training is over (every epoch trained, or stopped on non-finite losses)."""
        with self.changed:
            if not self._done(name):
                self.waiting.add(name)
                self.changed.notify_all()
                self.changed.wait_for(lambda: name not in self.waiting or self.broken is not None)
            self._raise_for(name)
            rows, self.outbox[name] = self.outbox[name], []
            return rows, self._done(name)

    def leave(self, name: str) -> None:
        """Stop training `name` from the next round on."""
        with self.changed:
            self.leaving.add(name)
            self.changed.notify_all()

    def _raise_for(self, name: str) -> None:
        reason = self.failed.get(name) or self.broken
        if reason is not None:
            raise RuntimeError(f"the trial's pack failed: {reason}")

    def _done(self, name: str) -> bool:
        member = self.pack.members.get(name)
        return member is None or member.training.done

    def _round_ready(self) -> bool:
        active = {name for name, member in self.pack.members.items() if not member.training.done}
        return bool(active) and active <= self.waiting

    def _train(self) -> None:
        while True:
            with self.changed:
                self.changed.wait_for(lambda: self.joining or self.leaving or self._round_ready())
                joining, self.joining = self.joining, {}
                leaving, self.leaving = self.leaving, set()
            for name in leaving:
                with self.changed:  # the members are read under the lock by the threads Ray calls in
                    self.pack.remove(name)
                    self.waiting.discard(name)
            for name, (config, run_path) in joining.items():
                self._build(name, config, run_path)
            with self.changed:
                ready = self._round_ready()
            if not ready:
                continue
            try:
                self.pack.train_round()
            except Exception as err:  # noqa: BLE001 — handed to every member's trial, which Tune records
                with self.changed:
                    self.broken = f"{type(err).__name__}: {err}"
                    self.changed.notify_all()
                return
            with self.changed:
                self.waiting.clear()
                self.changed.notify_all()

    def _build(self, name: str, config: Config, run_path: str) -> None:
        from pipeline.ray.nodes import record_worker

        run = RunDir(run_path)

        def report(row: dict[str, float]) -> None:
            with self.changed:
                # None while the trial rejoins: its earlier member's trial process is gone, and that member's
                # last row (in metrics.jsonl already) is dropped rather than handed to the new process.
                box = self.outbox.get(name)
                if box is not None:
                    box.append(row)

        with self.changed:  # the joining trial sees it a member, or failed, all at once
            try:
                record_worker(run, 0)  # the pack's process is the trial's only worker
                self.outbox[name] = []  # restoring the run may report a row checkpointed but never reported
                self.pack.add(name, config, run, report)
            except Exception as err:  # noqa: BLE001 — the joining trial fails with it; the others train on
                self.outbox.pop(name, None)
                self.failed[name] = f"{type(err).__name__}: {err}"
            self.changed.notify_all()


@dataclass
class _Pack:
    handle: Any
    members: set[str] = field(default_factory=set)


class PackRegistry:
    """Which pack each trial trains in; starts packs as trials need places and ends the ones left empty."""

    def __init__(self, plan: PackPlan) -> None:
        self.plan = plan
        self.packs: list[_Pack] = []

    def assign(self, name: str) -> Any:
        """The pack `name` trains in, or None while every pack is full and no more fit (ask again). Trials go to
        a new pack while more fit, then to the pack with the fewest: packs share the cores (or GPUs) between
        them, and a trial waiting its turn in a full pack would leave another's idle."""
        for pack in self.packs:
            if name in pack.members:  # a trial started again after its process died
                pack.members.discard(name)
                pack.handle.leave.remote(name)
        usable = {id(pack): _usable(pack.handle) for pack in self.packs}
        self.packs = [pack for pack in self.packs if usable[id(pack)] or pack.members]
        if len(self.packs) < self.plan.packs:
            return self._new_pack(name)
        free = [pack for pack in self.packs if len(pack.members) < self.plan.per_pack and usable[id(pack)]]
        if not free:
            return None
        pack = min(free, key=lambda pack: len(pack.members))
        pack.members.add(name)
        return pack.handle

    def _new_pack(self, name: str) -> Any:
        worker = self.plan.worker
        actor = ray.remote(PackActor).options(
            num_cpus=worker.cpus, num_gpus=worker.gpus, max_concurrency=self.plan.per_pack + 4, max_restarts=0)
        pack = _Pack(actor.remote("cuda" if worker.gpus else "cpu", worker.threads), {name})
        self.packs.append(pack)
        return pack.handle

    def release(self, name: str) -> None:
        """Take `name` out of its pack; a pack left empty ends, freeing its CPUs and GPU."""
        for pack in list(self.packs):
            if name in pack.members:
                pack.members.discard(name)
                pack.handle.leave.remote(name)
                if not pack.members:
                    ray.kill(pack.handle)
                    self.packs.remove(pack)


def _usable(handle: Any) -> bool:
    """False for a pack whose process died or whose round failed; a pack still starting counts as usable."""
    from ray.exceptions import GetTimeoutError, RayActorError

    try:
        return bool(ray.get(handle.ping.remote(), timeout=1.0))
    except GetTimeoutError:
        return True
    except RayActorError:
        return False


def registry_name(sweep_name: str) -> str:
    return REGISTRY_PREFIX + sweep_name


@contextmanager
def pack_registry(sweep_name: str, plan: PackPlan) -> Iterator[None]:
    """The sweep's registry for as long as Tune runs; ending it ends the packs it started."""
    registry = ray.remote(PackRegistry).options(name=registry_name(sweep_name), num_cpus=0).remote(plan)
    try:
        yield
    finally:
        ray.kill(registry)


def train_in_pack(name: str, config: Config, run: RunDir, sweep_name: str) -> Iterator[dict[str, float]]:
    """Train trial `name` in one of the sweep's packs: its metrics rows, epoch by epoch, as they come."""
    registry = ray.get_actor(registry_name(sweep_name))
    while (pack := ray.get(registry.assign.remote(name))) is None:
        time.sleep(ASSIGN_RETRY_S)
    try:
        ray.get(pack.join.remote(name, config, str(run.path.resolve())))
        done = False
        while not done:
            rows, done = ray.get(pack.next_epoch.remote(name))
            yield from rows
    finally:
        registry.release.remote(name)


class PackReleaser(Callback):
    """Frees the place of every trial Tune ends, in whatever way it ends."""

    def __init__(self, sweep_name: str) -> None:
        self.sweep_name = sweep_name

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._release(trial.trial_id)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._release(trial.trial_id)

    def _release(self, trial_id: str) -> None:
        ray.get_actor(registry_name(self.sweep_name)).release.remote(trial_id)
