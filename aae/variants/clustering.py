"""Unsupervised clustering AAE (paper §6): the semi-supervised architecture with no supervised phase."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from aae.batch import Batch
from aae.variants.categorical import CategoricalAAE, CategoricalConfig


@dataclass
class ClusteringConfig(CategoricalConfig):
    """Number of clusters m (the paper: 16 or 30)."""

    n_clusters: int = 16


class ClusteringAAE(CategoricalAAE):
    """y has n_clusters entries; cluster(x) = argmax q(y|x)."""

    config_class = ClusteringConfig
    label_needs = "none"

    def __init__(self, config: ClusteringConfig) -> None:
        super().__init__(config, config.n_clusters, config.n_clusters + config.z_dim)

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        """Reconstruction; both discriminators; the generator."""
        losses = {"recon_loss": self.reconstruct(batch.x)}
        losses.update(self.regularise(batch.x))
        return losses

    def cluster(self, x: Tensor) -> Tensor:
        """The cluster index of each row: argmax q(y|x)."""
        return self.classify(x).argmax(1)
