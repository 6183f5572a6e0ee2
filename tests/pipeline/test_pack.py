"""Runs packed into one process (pipeline.pack, behind `tune --trials-per-process`) train exactly the numbers each
would alone, whenever they join or leave."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.checkpoints import epoch_checkpoints, read_checkpoint
from pipeline.config import load_config
from pipeline.loop import WorkerContext, train_loop
from pipeline.pack import TrainingPack
from pipeline.rundir import RunDir
from tests.conftest import tiny_overrides

# Three trials of a sweep: different seeds, rates, label counts and a different variant.
TRIALS = {
    "a": ("semisup", ["data.labels=100", "train.seed=0"]),
    "b": ("semisup", ["data.labels=all", "train.seed=3", "train.lr.reconstruction=0.02"]),
    "c": ("cluster16", ["train.seed=5", "model.params.z_dim=4"]),
}


def _run(root: Path, name: str) -> RunDir:
    (root / name).mkdir(parents=True)
    return RunDir(root / name)


def _curve(run: RunDir) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in run.read_metrics()]


def test_packed_runs_joining_and_leaving_train_exactly_as_alone(synthetic_dataset, tmp_path) -> None:
    configs = {name: load_config(experiment, tiny_overrides(synthetic_dataset, "train.epochs=3", *extra))
               for name, (experiment, extra) in TRIALS.items()}
    alone = {}
    for name, config in configs.items():
        alone[name] = _run(tmp_path / "alone", name)
        train_loop(config, alone[name], WorkerContext())

    pack, packed, reported = TrainingPack(torch.device("cpu")), {}, {name: [] for name in configs}

    def join(name: str) -> None:
        packed[name] = _run(tmp_path / "packed", name)
        pack.add(name, configs[name], packed[name], reported[name].append)

    join("a")
    join("c")
    assert pack.train_round() == []
    join("b")  # a trial that starts while the others are at epoch 1
    pack.train_round()
    pack.remove("c")  # a trial the scheduler stops after its second epoch
    rounds = 0
    while (done := pack.train_round()) != ["a", "b"]:
        rounds += 1
        assert rounds < 5 and "b" not in done
    assert pack.train_round() == ["a", "b"]  # nothing left to train: a round of done members trains nothing

    for name in ("a", "b"):
        assert _curve(packed[name]) == _curve(alone[name]), name
        assert [row["epoch"] for row in reported[name]] == [1, 2, 3]
        ours = read_checkpoint(epoch_checkpoints(packed[name])[-1])["training_state"]["model"]
        theirs = read_checkpoint(epoch_checkpoints(alone[name])[-1])["training_state"]["model"]
        assert all(torch.equal(ours[key], theirs[key]) for key in theirs), name
    assert _curve(packed["c"]) == _curve(alone["c"])[:2]
    assert not packed["c"].progress_path.exists()


def test_a_pack_actor_trains_on_when_a_member_stops_without_asking_again(synthetic_dataset, tmp_path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.ray.packs import PackActor

    config = load_config("semisup", tiny_overrides(synthetic_dataset, "data.labels=100", "train.epochs=3"))
    actor = PackActor("cpu", threads=1)  # the class Ray hosts, called here from threads as Ray's would
    runs = {name: _run(tmp_path, name) for name in ("kept", "stopped", "late")}
    with ThreadPoolExecutor(4) as calls:
        for future in [calls.submit(actor.join, name, config, str(runs[name].path)) for name in ("kept", "stopped")]:
            future.result()
        first = [calls.submit(actor.next_epoch, name) for name in ("kept", "stopped")]
        assert [future.result(timeout=60) for future in first] == [([runs[n].read_metrics()[0]], False)
                                                                   for n in ("kept", "stopped")]
        # "stopped" never asks again (Tune stopped its trial); "kept" waits for it until the trial leaves.
        waiting = calls.submit(actor.next_epoch, "kept")
        actor.leave("stopped")
        rows, done = waiting.result(timeout=60)
        assert [row["epoch"] for row in rows] == [2] and not done
        actor.join("late", config, str(runs["late"].path))  # the freed place goes to the next trial
        later = [calls.submit(actor.next_epoch, name) for name in ("kept", "late")]
        assert [future.result(timeout=60) for future in later] == [([runs["kept"].read_metrics()[2]], True),
                                                                   ([runs["late"].read_metrics()[0]], False)]
    assert [row["epoch"] for row in runs["stopped"].read_metrics()] == [1]
