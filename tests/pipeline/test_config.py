"""Config resolution and validation: every experiment loads, bad input is one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import config_to_yaml, flat_config, list_experiments, load_config
from pipeline.errors import UserError

PAPER_EXPERIMENTS = {
    "unsup-gaussian", "unsup-gaussian-8d", "unsup-mixture", "vae-gaussian", "vae-mixture", "labelreg-mixture",
    "labelreg-swissroll", "supervised", "semisup", "cluster16", "cluster30", "dimred-2d", "dimred-2d-unsup",
    "dimred-10d",
}


def test_every_paper_experiment_has_a_described_config() -> None:
    experiments = list_experiments()
    assert set(experiments) >= PAPER_EXPERIMENTS
    assert all(description for description in experiments.values())


@pytest.mark.parametrize("experiment", sorted(PAPER_EXPERIMENTS))
def test_every_experiment_validates_and_round_trips_through_yaml(experiment: str, tmp_path) -> None:
    config = load_config(experiment)
    saved = tmp_path / "config.yaml"
    saved.write_text(config_to_yaml(config))
    assert load_config(str(saved)) == config


def test_overrides_reach_nested_keys_and_model_params() -> None:
    config = load_config(
        "semisup", ["data.labels=100", "train.lr.reconstruction=0.001", "model.params.z_dim=4"], {"run.workers": 3}
    )
    assert config.data.labels == 100
    assert config.train.lr.reconstruction == 0.001
    assert config.model.params["z_dim"] == 4
    assert config.run.workers == 3


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["train.nonsense=1"], "train.nonsense"),
        (["data.labels=60000"], "data.labels"),
        (["run.workers=0"], "run.workers"),
        (["train.lr.reconstruction=-0.1"], "train.lr.reconstruction"),
        (["train.epochs=many"], "train.epochs"),
        (["model.params.not_a_param=3"], "not_a_param"),
        (["model.variant=transformer"], "model.variant"),
        (["no-equals-sign"], "no-equals-sign"),
        (["run.workers=2", "run.gpus_per_worker=0.5"], "would share a GPU, which NCCL cannot do"),
    ],
)
def test_bad_overrides_are_one_line_errors_naming_the_key(overrides: list[str], named: str) -> None:
    with pytest.raises(UserError) as caught:
        load_config("semisup", overrides)
    message = caught.value.one_line()
    assert named in message
    assert "\n" not in message


def test_unknown_experiment_lists_the_known_ones() -> None:
    with pytest.raises(UserError, match="unknown experiment 'semisupervised'.*semisup"):
        load_config("semisupervised")


def test_malformed_yaml_file_is_a_user_error(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epochs: 3\n  seed: [\n")
    with pytest.raises(UserError, match="malformed YAML"):
        load_config(str(bad))


def test_configuration_md_lists_every_key_as_the_code_has_it() -> None:
    from pipeline.config_docs import render

    page = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    assert page == render(), "docs/configuration.md is stale: python -m pipeline.config_docs > docs/configuration.md"
    for key in flat_config(load_config("semisup")):
        if not key.startswith(("model.params", "experiment")):
            assert f"`{key}`" in page, key
