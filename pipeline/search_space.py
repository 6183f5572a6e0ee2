"""Search spaces for `aae-pipeline tune`: conf/search/*.yaml parsed into typed ranges and checked before Ray starts.

A space file maps dotted config keys (the ones `--set` takes) to one range each:

    train.lr.reconstruction: {loguniform: [0.001, 0.1]}
    model.params.z_dim: {choice: [5, 10, 20]}
    train.batch_size: {grid: [50, 100]}
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import CONF_DIR, Config, load_config, read_yaml
from pipeline.errors import UserError
from pipeline.plans import plan_for

SEARCH_DIR = CONF_DIR / "search"
LISTS = ("grid", "choice")  # a finite list of values
BOUNDS = ("uniform", "loguniform", "randint")  # [lo, hi]: floats, floats on a log scale, integers lo..hi-1
SEARCHES = ("random", "grid", "optuna")
# Keys the tune command sets itself (--workers-per-trial, --address) or that make no sense to search.
RESERVED = ("run.", "experiment", "description", "tracking.")
FULL_CHECK_LIMIT = 8  # up to this many corner combinations are all validated, beyond it each value once


@dataclass(frozen=True)
class Range:
    """One searched key: `kind` is grid | choice | uniform | loguniform | randint; `values` the list or [lo, hi]."""

    key: str
    kind: str
    values: tuple[Any, ...]

    def corners(self) -> list[Any]:
        """Values that stand for the whole range when checking configs: every listed value, or both bounds."""
        if self.kind in LISTS:
            return list(self.values)
        lo, hi = self.values
        return [lo, hi - 1] if self.kind == "randint" else [lo, hi]


@dataclass(frozen=True)
class SearchSpace:
    """The ranges of one space file, in file order."""

    ranges: tuple[Range, ...]
    source: str

    @property
    def keys(self) -> list[str]:
        return [r.key for r in self.ranges]

    def to_dict(self) -> dict[str, dict[str, list[Any]]]:
        """The space as it would be written in a space file (for sweep.json)."""
        return {r.key: {r.kind: list(r.values)} for r in self.ranges}


def default_space_path(config: Config) -> Path:
    """conf/search/<family>.yaml for the experiment's model variant (its plan names the family)."""
    family = plan_for(config.model.variant).search_space
    if family is None:
        raise UserError(
            f"no default search space for variant {config.model.variant!r}",
            "write one (see conf/search/semisup.yaml) and pass it with --space",
        )
    return SEARCH_DIR / f"{family}.yaml"


def load_search_space(path: Path) -> SearchSpace:
    """Read and parse a space file; any problem is a one-line UserError naming the file and key."""
    if not path.is_file():
        raise UserError(f"search space {path} does not exist", "check --space, or see conf/search/ for examples")
    return parse_search_space(read_yaml(path), str(path))


def parse_search_space(raw: Any, source: str) -> SearchSpace:
    """Turn `{dotted.key: {kind: values}}` into a SearchSpace, checking the shape of every range."""
    if not isinstance(raw, dict) or not raw:
        raise UserError(f"{source} must map config keys to ranges", "e.g. model.params.z_dim: {choice: [5, 10]}")
    return SearchSpace(tuple(_parse_range(str(key), spec, source) for key, spec in raw.items()), source)


def _parse_range(key: str, spec: Any, source: str) -> Range:
    where = f"{source}: {key}"
    if key.startswith(RESERVED):
        raise UserError(f"{where} cannot be searched", "set run.* with the tune command's flags, not the space")
    if not isinstance(spec, dict) or len(spec) != 1:
        raise UserError(f"{where} needs exactly one range", _SPEC_HELP)
    kind, values = next(iter(spec.items()))
    if kind in LISTS:
        if not isinstance(values, list) or not values:
            raise UserError(f"{where}: {kind} needs a non-empty list of values", _SPEC_HELP)
        return Range(key, kind, tuple(values))
    if kind not in BOUNDS:
        raise UserError(f"{where}: unknown range {kind!r}", _SPEC_HELP)
    if not (isinstance(values, list) and len(values) == 2 and all(_is_number(v) for v in values)):
        raise UserError(f"{where}: {kind} needs [lo, hi] numbers (got {values!r})", _SPEC_HELP)
    lo, hi = values
    if lo >= hi:
        raise UserError(f"{where}: {kind} needs lo < hi (got [{lo}, {hi}])", "swap or widen the bounds")
    if kind == "loguniform" and lo <= 0:
        raise UserError(f"{where}: loguniform needs lo > 0 (got {lo})", "use a positive lower bound")
    if kind == "randint" and not all(isinstance(v, int) for v in values):
        raise UserError(f"{where}: randint needs integer bounds (got {values!r})", "write e.g. {randint: [2, 20]}")
    return Range(key, kind, (lo, hi))


_SPEC_HELP = (
    "write one of {grid: [...]}, {choice: [...]}, {uniform: [lo, hi]}, {loguniform: [lo, hi]}, {randint: [lo, hi]}"
)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_search_fits(space: SearchSpace, search: str) -> None:
    """Refuse a space the chosen search algorithm cannot walk."""
    if search not in SEARCHES:
        raise UserError(f"unknown search {search!r}", f"choose one of: {', '.join(SEARCHES)}")
    grids = [r.key for r in space.ranges if r.kind == "grid"]
    if search == "optuna" and grids:
        raise UserError(
            f"Optuna cannot walk a grid ({', '.join(grids)} in {space.source})",
            "write {choice: [...]} instead of {grid: [...]}, or use --search random|grid",
        )
    continuous = [r.key for r in space.ranges if r.kind in BOUNDS]
    if search == "grid" and continuous:
        raise UserError(
            f"--search grid needs finite values, but {', '.join(continuous)} in {space.source} is a range",
            "use {grid: [...]} or {choice: [...]} for every key, or --search random|optuna",
        )


def grid_size(space: SearchSpace, search: str) -> int:
    """How many points one pass over the space's grid covers (choices are enumerated too under --search grid)."""
    enumerated = ("grid", "choice") if search == "grid" else ("grid",)
    return math.prod(len(r.values) for r in space.ranges if r.kind in enumerated)


def check_trial_configs(
    space: SearchSpace, experiment: str, overrides: list[str], flags: dict[str, Any]
) -> Config:
    """Resolve sample trial configs with pipeline.config so a bad key or value fails now; returns the base config."""
    base = load_config(experiment, overrides, flags)
    set_keys = {item.partition("=")[0].strip() for item in overrides}
    clash = sorted(set_keys & set(space.keys))
    if clash:
        raise UserError(f"{', '.join(clash)} is both searched and --set", "drop the --set or the key in the space")
    for params in _sample_params(space):
        try:
            load_config(experiment, overrides, {**flags, **params})
        except UserError as err:
            shown = ", ".join(f"{key}={value!r}" for key, value in params.items())
            raise UserError(f"search space {space.source} with {shown}: {err.message}", err.fix) from None
    return base


def _sample_params(space: SearchSpace) -> list[dict[str, Any]]:
    """Every combination of the corner values when there are few, else as many configs as the longest list,
    each value of every key in at least one (building a model per config takes a moment)."""
    corners = [r.corners() for r in space.ranges]
    if math.prod(len(c) for c in corners) <= FULL_CHECK_LIMIT:
        return [dict(zip(space.keys, combo, strict=True)) for combo in itertools.product(*corners)]
    longest = max(len(c) for c in corners)
    pairs = list(zip(space.keys, corners, strict=True))
    return [{key: values[i % len(values)] for key, values in pairs} for i in range(longest)]


def encoded_values(item: Range) -> list[Any]:
    """A list range's values as the searchers get them: JSON text when any is a list or mapping.

    Optuna only takes scalar choices, so e.g. `hidden: {choice: [[500, 500], [1000, 1000]]}` travels as text."""
    if any(isinstance(value, list | dict) for value in item.values):
        return [json.dumps(value) for value in item.values]
    return list(item.values)


def decode_params(space: SearchSpace, params: dict[str, Any]) -> dict[str, Any]:
    """A trial's sampled parameters with JSON-encoded values turned back into lists and mappings."""
    encoded = {item.key for item in space.ranges if item.kind in LISTS and encoded_values(item) != list(item.values)}
    return {key: json.loads(value) if key in encoded else value for key, value in params.items()}
