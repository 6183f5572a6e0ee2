"""The AAE family: registry name -> model class, and build_model that checks config keys.

A variant is named by its registry name or by an import path "package.module:Class", so a new variant can
live in its own module (under aae/variants/ or anywhere importable) without editing this file;
register_variant gives it a short name within one process.
"""

from __future__ import annotations

from typing import Any

from aae.registry import resolve
from aae.variants.base import AAEModel, config_keys
from aae.variants.clustering import ClusteringAAE
from aae.variants.dim_reduction import DimReductionAAE
from aae.variants.label_regularised import LabelRegularisedAAE
from aae.variants.semi_supervised import SemiSupervisedAAE
from aae.variants.supervised import SupervisedAAE
from aae.variants.unsupervised import UnsupervisedAAE
from aae.variants.vae import VAE

VARIANTS: dict[str, type[AAEModel]] = {
    "unsupervised": UnsupervisedAAE,
    "vae": VAE,
    "label_regularised": LabelRegularisedAAE,
    "supervised": SupervisedAAE,
    "semi_supervised": SemiSupervisedAAE,
    "clustering": ClusteringAAE,
    "dim_reduction": DimReductionAAE,
}

__all__ = ["VARIANTS", "AAEModel", "build_model", "register_variant", "variant_class"]


def register_variant(name: str, cls: type[AAEModel]) -> None:
    """Make `name` build `cls` in this process (an import path works everywhere, Ray workers included)."""
    if not (isinstance(cls, type) and issubclass(cls, AAEModel)):
        raise TypeError(f"a variant must be an AAEModel subclass, got {cls!r}")
    if VARIANTS.get(name, cls) is not cls:
        raise ValueError(f"variant name {name!r} is taken by {VARIANTS[name].__name__}")
    VARIANTS[name] = cls


def variant_class(name: str) -> type[AAEModel]:
    """The model class of a registry name or import path "package.module:Class"; ValueError if neither."""
    cls = resolve(name, VARIANTS, "variant")
    if not (isinstance(cls, type) and issubclass(cls, AAEModel)):
        raise ValueError(f"variant {name!r} is not an AAEModel subclass")
    return cls


def build_model(name: str, params: dict[str, Any] | None = None) -> AAEModel:
    """Build a variant from its registry name (or import path) and config params; unknown names or keys raise
    ValueError."""
    cls = variant_class(name)
    allowed = config_keys(cls.config_class)
    params = dict(params or {})
    for key in params:
        if key not in allowed:
            raise ValueError(f"unknown key {key!r} for variant {name!r}; allowed keys: {', '.join(allowed)}")
    return cls(cls.config_class(**params))
