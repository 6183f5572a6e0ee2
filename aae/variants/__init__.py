"""The AAE family: registry name -> model class, and build_model that checks config keys."""

from __future__ import annotations

from typing import Any

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

__all__ = ["VARIANTS", "AAEModel", "build_model"]


def build_model(name: str, params: dict[str, Any] | None = None) -> AAEModel:
    """Build a variant from its registry name and config params; unknown names or keys raise ValueError."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose one of {sorted(VARIANTS)}")
    cls = VARIANTS[name]
    allowed = config_keys(cls.config_class)
    params = dict(params or {})
    for key in params:
        if key not in allowed:
            raise ValueError(f"unknown key {key!r} for variant {name!r}; allowed keys: {', '.join(allowed)}")
    return cls(cls.config_class(**params))
