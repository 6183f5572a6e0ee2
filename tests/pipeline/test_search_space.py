"""Search spaces: every range kind parses, bad files fail in one line, and sampled configs are validated up front."""

from __future__ import annotations

import pytest

from pipeline.config import load_config
from pipeline.errors import UserError
from pipeline.search_space import (
    SEARCH_DIR,
    Range,
    SearchSpace,
    check_search_fits,
    check_trial_configs,
    decode_params,
    default_space_path,
    encoded_values,
    grid_size,
    load_search_space,
    parse_search_space,
)
from pipeline.sweep import sweep_metric

TINY = ["model.params.hidden=[32,32]", "model.params.disc_hidden=[16,16]"]


def test_every_range_kind_parses_in_file_order(tmp_path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(
        "model.params.z_dim: {grid: [5, 10]}\n"
        "model.params.hidden: {choice: [[32, 32], [64, 64]]}\n"
        "train.lr.reconstruction: {loguniform: [0.001, 0.1]}\n"
        "train.decay_factor: {uniform: [0.1, 0.5]}\n"
        "train.batch_size: {randint: [50, 101]}\n"
    )
    space = load_search_space(path)
    assert [(r.key, r.kind) for r in space.ranges] == [
        ("model.params.z_dim", "grid"),
        ("model.params.hidden", "choice"),
        ("train.lr.reconstruction", "loguniform"),
        ("train.decay_factor", "uniform"),
        ("train.batch_size", "randint"),
    ]
    assert space.ranges[4].corners() == [50, 100]  # randint's upper bound is exclusive
    assert parse_search_space(space.to_dict(), "again").ranges == space.ranges


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"train.lr.reconstruction": {"normal": [0, 1]}}, "unknown range 'normal'"),
        ({"train.lr.reconstruction": {"uniform": [0.1, 0.01]}}, "needs lo < hi"),
        ({"train.lr.reconstruction": {"loguniform": [0, 0.1]}}, "loguniform needs lo > 0"),
        ({"train.batch_size": {"randint": [10, 20.5]}}, "randint needs integer bounds"),
        ({"model.params.z_dim": {"choice": []}}, "non-empty list"),
        ({"model.params.z_dim": [5, 10]}, "needs exactly one range"),
        ({"model.params.z_dim": {"choice": [5], "grid": [5]}}, "needs exactly one range"),
        ({"run.workers": {"choice": [1, 2]}}, "cannot be searched"),
        ([1, 2], "must map config keys to ranges"),
    ],
)
def test_malformed_ranges_are_one_line_user_errors(raw, expected) -> None:
    with pytest.raises(UserError, match=expected) as caught:
        parse_search_space(raw, "space.yaml")
    assert "\n" not in caught.value.one_line()


def test_malformed_yaml_names_the_line(tmp_path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text("train.lr.reconstruction: {uniform: [0.1\n")
    with pytest.raises(UserError, match="malformed YAML .* line"):
        load_search_space(path)


def test_grid_with_optuna_tells_the_user_to_use_choice() -> None:
    space = parse_search_space({"model.params.z_dim": {"grid": [5, 10]}}, "space.yaml")
    with pytest.raises(UserError, match=r"Optuna cannot walk a grid.*\{choice: \[\.\.\.\]\}"):
        check_search_fits(space, "optuna")
    check_search_fits(space, "random")


def test_grid_search_refuses_continuous_ranges_and_enumerates_choices() -> None:
    space = parse_search_space(
        {"model.params.z_dim": {"grid": [5, 10]}, "train.batch_size": {"choice": [50, 100, 200]}}, "space.yaml"
    )
    assert grid_size(space, "grid") == 6 and grid_size(space, "random") == 2
    ranged = parse_search_space({"train.lr.reconstruction": {"uniform": [0.01, 0.1]}}, "space.yaml")
    with pytest.raises(UserError, match="--search grid needs finite values"):
        check_search_fits(ranged, "grid")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"train.bogus": {"choice": [1, 2]}}, "unknown config key 'train.bogus'"),
        ({"model.params.bogus": {"choice": [1, 2]}}, "unknown key 'bogus'"),
        ({"train.batch_size": {"choice": [100, 0]}}, "train.batch_size=0"),
        ({"data.labels": {"choice": [100, 70000]}}, "data.labels"),
    ],
)
def test_sampled_trial_configs_are_validated_before_ray_starts(raw, expected) -> None:
    space = parse_search_space(raw, "space.yaml")
    with pytest.raises(UserError, match=expected):
        check_trial_configs(space, "semisup", TINY, {})


def test_a_key_both_searched_and_set_is_refused() -> None:
    space = parse_search_space({"model.params.z_dim": {"choice": [5, 10]}}, "space.yaml")
    with pytest.raises(UserError, match="both searched and --set"):
        check_trial_configs(space, "semisup", [*TINY, "model.params.z_dim=3"], {})


def test_list_choices_travel_as_text_and_come_back_as_lists() -> None:
    item = Range("model.params.hidden", "choice", ([32, 32], [64, 64]))
    space = SearchSpace((item, Range("model.params.z_dim", "choice", (5, 10))), "space.yaml")
    assert encoded_values(item) == ["[32, 32]", "[64, 64]"]  # Optuna takes scalar choices only
    decoded = decode_params(space, {"model.params.hidden": "[64, 64]", "model.params.z_dim": 10})
    assert decoded == {"model.params.hidden": [64, 64], "model.params.z_dim": 10}


@pytest.mark.parametrize(
    ("experiment", "space_file", "metric"),
    [
        ("semisup", "semisup.yaml", "val/error"),
        ("cluster16", "clustering.yaml", "val/cluster_error"),
        ("dimred-2d-unsup", "dimred.yaml", "val/cluster_error"),
        ("dimred-2d", "dimred.yaml", "val/error"),
        ("unsup-gaussian", "unsupervised.yaml", "val/recon_bce"),
        ("vae-mixture", "vae.yaml", "val/recon_bce"),
    ],
)
def test_each_family_has_a_default_space_that_validates(experiment, space_file, metric) -> None:
    config = load_config(experiment)
    path = default_space_path(config)
    assert path == SEARCH_DIR / space_file
    space = load_search_space(path)
    check_trial_configs(space, experiment, [], {})
    assert sweep_metric(config) == metric


def test_variants_without_a_default_space_ask_for_one() -> None:
    with pytest.raises(UserError, match="pass it with --space"):
        default_space_path(load_config("supervised"))
