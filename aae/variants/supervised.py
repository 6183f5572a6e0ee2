"""Supervised AAE (paper §4): the decoder gets the one-hot label, so z only has to carry style."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from aae.priors import one_hot
from aae.variants.labelled import LabelledConfig
from aae.variants.single_code import SingleCodeAAE


@dataclass
class SupervisedConfig(LabelledConfig):
    """Style code size (the paper: about 15), classes, and the style prior (built with dim=z_dim)."""

    z_dim: int = 15


class SupervisedAAE(SingleCodeAAE):
    """Encoder x -> z (style); decoder [one-hot y, z] -> x; one discriminator on z."""

    config_class = SupervisedConfig
    label_needs = "all"

    @property
    def decoder_input_dim(self) -> int:
        """The one-hot label and z."""
        return self.config.n_classes + self.config.z_dim

    def decoder_input(self, z: Tensor, y: Tensor | None) -> Tensor:
        """[one-hot y, z], what the decoder reads."""
        return torch.cat([self.config.y_scale * one_hot(y, self.config.n_classes).to(z), z], 1)

    def decode_with_labels(self, z: Tensor, y: Tensor) -> Tensor:
        """Images for style codes z rendered as classes y."""
        return self.decode(self.decoder_input(z.to(self.device), y.to(self.device)))

    def render_as_each_category(self, x: Tensor) -> Tensor:
        """Each row's style z decoded with every label: (N, classes, pixels), the style grid."""
        z, m = self.encode(x), self.config.n_classes
        labels = torch.arange(m).repeat(len(z))
        return self.decode_with_labels(z.repeat_interleave(m, 0), labels).reshape(len(z), m, -1)

    def reconstruction(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """x through the encoder and back, rendered with its true labels y (required: the decoder reads them)."""
        if y is None:
            raise ValueError("the supervised AAE reconstructs with the true labels: pass y")
        return self.decode_with_labels(self.encode(x), y)

    @property
    def sample_labels(self) -> int:
        """The class each sample is rendered as."""
        return self.config.n_classes

    def sample(self, n: int, labels: Tensor | None = None) -> Tensor:
        """Decode n style draws as `labels` (classes), or as uniformly drawn ones."""
        y = torch.randint(self.config.n_classes, (n,)) if labels is None else labels
        return self.decode_with_labels(self.prior.sample(n), y)
