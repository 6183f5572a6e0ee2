"""Unsupervised clustering AAE (paper §6): the semi-supervised architecture with no supervised phase."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from aae.variants.categorical import CategoricalAAE, CategoricalConfig


@dataclass
class ClusteringConfig(CategoricalConfig):
    """Number of clusters m (the paper: 16 or 30)."""

    n_clusters: int = 16

    FIELD_DOCS: ClassVar[dict[str, str]] = {"n_clusters": "the number of clusters (y's size)"}


class ClusteringAAE(CategoricalAAE):
    """y has n_clusters entries; cluster(x) = argmax q(y|x)."""

    config_class = ClusteringConfig
    label_needs = "none"
    y_head = "clusters"

    def __init__(self, config: ClusteringConfig) -> None:
        super().__init__(config, n_categories=config.n_clusters)
