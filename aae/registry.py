"""Name -> class lookup shared by the prior and variant registries: a registered name, or an import path."""

from __future__ import annotations

import importlib
from typing import Any


def resolve(name: str, registry: dict[str, Any], kind: str) -> Any:
    """registry[name], or the object an import path "package.module:Name" points at; ValueError otherwise."""
    if name in registry:
        return registry[name]
    if ":" not in name:
        raise ValueError(f"unknown {kind} {name!r}; choose one of {sorted(registry)} or 'package.module:Class'")
    module_name, _, attr = name.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import {kind} {name!r}: {err}") from err
