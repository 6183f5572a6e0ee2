"""docs/configuration.md, generated from the typed config so that it cannot drift from the code:

    python -m pipeline.config_docs > docs/configuration.md

Every key of pipeline.config's sections (defaults as conf/base.yaml sets them) and every variant's model.params
(defaults as aae/variants/ sets them), each with its meaning. tests/pipeline/test_config.py fails when the file
is stale or a key has no meaning written down.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, fields
from typing import Any

from pydantic import BaseModel

from pipeline.config import CONF_DIR, Config, load_config

HEADER = """# Configuration

Every key a run's config has, its default, and what it means. A run's config is `conf/base.yaml` (the paper's
recipe), then the experiment's file (`conf/experiment/<name>.yaml`, only what differs), then each `--set
key=value`; `aae-pipeline show-config EXPERIMENT` prints the result. Where an experiment departs from the paper,
[deviations.md](deviations.md) says why.

This page is generated from the typed config (`pipeline/config.py`, and each variant's config in
`aae/variants/`): `python -m pipeline.config_docs > docs/configuration.md`.
"""


def render() -> str:
    """The whole page."""
    base = load_config(str(CONF_DIR / "base.yaml"))
    lines = [HEADER]
    for name, info in Config.model_fields.items():
        value = getattr(base, name)
        if isinstance(value, BaseModel):
            lines += ["", f"## {name}", "", _doc(type(value)), "", "| key | default | meaning |", "|---|---|---|"]
            lines += [f"| `{key}` | {_shown(default)} | {_cell(meaning)} |"
                      for key, default, meaning in _rows(name, value)]
        elif name != "experiment":
            lines += ["", f"## {name}", "", f"`{name}`, default {_shown(value)}: {_meaning(info.description, name)}."]
    lines += ["", "## model.params", "", _PARAMS_INTRO, "", "| key | default | variants | meaning |",
              "|---|---|---|---|", *_param_rows()]
    return "\n".join(lines).replace("\n\n\n", "\n\n") + "\n"


def _rows(prefix: str, section: BaseModel, context: str = "") -> list[tuple[str, Any, str]]:
    """(dotted key, default, meaning) for every leaf of a config section."""
    rows = []
    for name, info in type(section).model_fields.items():
        key, value = f"{prefix}.{name}", getattr(section, name)
        meaning = _meaning(info.description, key)
        if isinstance(value, BaseModel):  # a per-phase group: one row per phase
            rows += _rows(key, value, f"{_doc(type(value)).rstrip('.')}: ")
        elif name != "params":
            rows.append((key, value, context + meaning))
    return rows


def _meaning(description: str | None, key: str) -> str:
    if not description:
        raise ValueError(f"config key {key} has no description: give its Field one in pipeline/config.py")
    return description


def _doc(cls: type) -> str:
    return " ".join((cls.__doc__ or "").split())


_PARAMS_INTRO = ("`model.params` goes to the variant's own typed config in `aae/variants/`, which refuses keys it "
                 "does not have. Defaults are the variant's; an experiment's file sets what differs.")


def _param_rows() -> list[str]:
    """One row per model.params key: its default in each variant that has it, and what it means."""
    from aae.variants import VARIANTS

    defaults: dict[str, dict[str, list[str]]] = {}
    meanings: dict[str, str] = {}
    for variant, cls in VARIANTS.items():
        config = cls.config_class
        docs: dict[str, str] = {}
        for klass in reversed(config.__mro__):  # a subclass's words for a key win
            docs.update(vars(klass).get("FIELD_DOCS", {}))
        for field in fields(config):
            if field.name not in docs:
                raise ValueError(f"{config.__name__}.{field.name} has no entry in FIELD_DOCS")
            default = field.default if field.default is not MISSING else field.default_factory()
            defaults.setdefault(field.name, {}).setdefault(_shown(default), []).append(variant)
            meanings.setdefault(field.name, docs[field.name])
    rows = []
    for key in sorted(defaults):
        by_default = defaults[key]
        every = [variant for group in by_default.values() for variant in group]
        shown = "; ".join(f"{value} ({', '.join(group)})" if len(by_default) > 1 else value
                          for value, group in by_default.items())
        which = "all" if len(every) == len(VARIANTS) else ", ".join(sorted(every))
        rows.append(f"| `{key}` | {shown} | {which} | {_cell(meanings[key])} |")
    return rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|")  # a table cell: q(y|x) would end it


def _shown(value: Any) -> str:
    if value is None:
        return "null"
    if value == "":
        return '`""`'
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple | list | dict):
        return f"`{json.dumps(list(value) if isinstance(value, tuple) else value)}`"
    return f"`{value}`"


if __name__ == "__main__":
    print(render(), end="")
