"""Dimensionality-reduction AAE (paper §7): representation = W_C·y + z, cluster heads kept η apart.

W_C is a bias-free linear map from the m-way y to the n-D code space; its columns are the cluster
heads. A hinge on every pair of heads (no penalty beyond η) joins the reconstruction step, the only
phase that updates W_C. With use_labels, a supervised phase fits q(y|x) to the labels (m = classes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from aae.losses import cluster_head_hinge
from aae.networks import init_weights
from aae.variants.base import _check
from aae.variants.categorical import CategoricalAAE, CategoricalConfig


@dataclass
class DimReductionConfig(CategoricalConfig):
    """m clusters, an n-D code (z_dim = n), the hinge threshold η, and whether labels are used.

    z_prior_std defaults to 0.25 (our choice, not the paper's): the style spread must stay well below η
    for the clusters to stay apart in the map.
    """

    z_dim: int = 2
    z_prior_std: float = 0.25
    n_clusters: int = 10
    eta: float = 1.0
    use_labels: bool = True

    FIELD_DOCS: ClassVar[dict[str, str]] = {
        "n_clusters": "the number of cluster heads (y's size; the classes when trained with labels)",
        "eta": "the distance every pair of cluster heads is kept apart",
        "use_labels": "fit q(y|x) to the labelled examples (false: unsupervised clusters)",
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.y_scale == 1, "y_scale does not apply to dim_reduction: the cluster heads W_C set y's scale")


class DimReductionAAE(CategoricalAAE):
    """The dimensionality-reduction AAE; encode(x) is the n-D map W_C·softmax(y) + z."""

    config_class = DimReductionConfig
    embeds_representation = True  # the map W_C·y + z is what the model is for

    def __init__(self, config: DimReductionConfig) -> None:
        super().__init__(config, config.n_clusters, representation_dim=config.z_dim)
        self.heads = nn.Linear(config.n_clusters, config.z_dim, bias=False)
        init_weights(self.heads, config.init_std)

    @property
    def label_needs(self) -> str:  # type: ignore[override]
        """"some" when trained with labels, else "none"."""
        return "some" if self.config.use_labels else "none"

    @property
    def y_head(self) -> str:  # type: ignore[override]
        """"classes" when trained with labels, else "clusters"."""
        return "classes" if self.config.use_labels else "clusters"

    def representation(self, y: Tensor, z: Tensor) -> Tensor:
        """W_C·y + z."""
        return self.heads(y) + z

    def cluster_heads(self) -> Tensor:
        """The m cluster heads (the columns of W_C), shape (m, n)."""
        return self.heads.weight.detach().T

    def reconstruction_penalties(self) -> dict[str, Tensor]:
        """The hinge keeping every pair of cluster heads η apart."""
        return {"hinge_loss": cluster_head_hinge(self.heads.weight.T, self.config.eta)}
