"""The stage chain: reuse of unchanged stages, --from, failures that keep finished stages (no Ray: stages are
stubbed where they would start it)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from pipeline import chain as chain_module
from pipeline.checkpoints import checkpoint_bytes, read_checkpoint
from pipeline.config import load_config
from pipeline.errors import StageError
from pipeline.rundir import RunDir


@pytest.fixture
def chain(monkeypatch, tmp_path):
    """Stub stages that count their calls and write a file, run in-process without Ray."""
    calls: list[str] = []

    def make(name: str):
        def stage_fn(config, run):
            calls.append(name)
            if name == "train":  # a checkpoint the driver can read (it checks before evaluating), tagged by call
                run.checkpoint_dir.mkdir(exist_ok=True)
                run.best_checkpoint.write_bytes(checkpoint_bytes({"calls": len(calls)}, 0, {"val/error": 1.0}))
                run.metrics_path.write_text(json.dumps({"epoch": 1}) + "\n")
            if name == "evaluate":  # like the real stage, its output file depends on its config
                (run.path / "evaluation.json").write_text(json.dumps(config.evaluate.model_dump()))
            return {"metrics": {f"{name}/done": 1.0}}
        return stage_fn

    stubs = {stage.name: make(stage.name) for stage in chain_module.STAGES}
    in_process = tuple(replace(stage, as_task=False) for stage in chain_module.STAGES)
    monkeypatch.setattr(chain_module, "STAGES", in_process)
    monkeypatch.setattr(chain_module.Stage, "load", lambda stage: stubs[stage.name])
    monkeypatch.setattr(chain_module, "connect_ray", lambda config: None)
    config = load_config("semisup", ["tracking.wandb=disabled"])
    return config, RunDir(tmp_path / "run"), calls, stubs


def test_second_run_reuses_every_stage_and_a_config_change_redoes_from_the_first_affected(chain) -> None:
    config, run, calls, _ = chain
    chain_module.run_chain(config, run)
    assert calls == ["prepare", "train", "evaluate", "visualize", "track"]
    calls.clear()
    chain_module.run_chain(config, run)
    assert calls == []
    chain_module.run_chain(load_config("semisup", ["tracking.wandb=disabled", "evaluate.parzen_samples=10"]), run)
    assert calls == ["evaluate", "track"]  # evaluate's inputs changed; visualize's did not


def test_from_train_redoes_training_from_scratch_and_keeps_the_old_results(chain) -> None:
    config, run, calls, _ = chain
    chain_module.run_chain(config, run)
    calls.clear()
    chain_module.run_chain(config, run, from_stage="train")
    assert calls == ["train", "evaluate", "visualize", "track"]
    archived = list(run.path.glob("previous-*/checkpoints/best.pt"))
    assert len(archived) == 1 and read_checkpoint(archived[0])["training_state"] == {"calls": 2}


def test_failed_stage_is_recorded_and_earlier_stages_are_kept(chain) -> None:
    config, run, calls, stubs = chain

    def broken(config, run):
        raise RuntimeError("figure backend exploded")

    stubs["visualize"] = broken
    with pytest.raises(StageError, match="stage 'visualize' failed.*figure backend exploded"):
        chain_module.run_chain(config, run)
    stages_record = run.read_manifest()["stages"]
    assert [stages_record[name]["status"] for name in ("prepare", "train", "evaluate", "visualize")] == [
        "done", "done", "done", "failed"]
    assert (run.path / "logs" / "visualize-error.log").exists()


def test_every_stage_names_a_function_that_exists() -> None:
    for stage in chain_module.STAGES:
        assert callable(stage.load()), stage.function
        assert stage.load().__name__ == stage.name
