"""Label-regularised AAE (paper §2.3): labels choose which part of the prior a code must match.

The discriminator also reads an (n+1)-way one-hot: the example's class, or the extra "unlabelled" entry.
Its real samples come from the class's component (labelled rows) or the whole prior (unlabelled rows),
paired with the same one-hot as the code they stand against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from aae.priors import one_hot
from aae.variants.labelled import LabelledConfig
from aae.variants.single_code import SingleCodeAAE


@dataclass
class LabelRegularisedConfig(LabelledConfig):
    """The prior must have n_classes components (mixture or swiss_roll); y_scale scales the discriminator's
    one-hot."""

    prior: str = "mixture"


class LabelRegularisedAAE(SingleCodeAAE):
    """Encoder -> z -> decoder; the discriminator sees (z, one-hot label or "unlabelled")."""

    config_class = LabelRegularisedConfig
    label_needs = "some"

    def check_prior(self) -> None:
        """One prior component per class."""
        if self.prior.n_components != self.config.n_classes:
            raise ValueError(f"prior {self.config.prior!r} has {self.prior.n_components} components, "
                             f"the label-regularised AAE needs n_classes={self.config.n_classes}")

    @property
    def condition_dim(self) -> int:
        """The classes and the "unlabelled" entry."""
        return self.config.n_classes + 1

    def critic_condition(self, y: Tensor | None) -> Tensor:
        """(n+1)-way one-hot: the class, or the last ("unlabelled") entry where y is -1."""
        n = self.config.n_classes
        return self.config.y_scale * one_hot(torch.where(y >= 0, y, n), n + 1)

    def prior_draw(self, n: int, y: Tensor | None) -> Tensor:
        """Draws from each labelled row's class component, or from the whole prior where y is -1."""
        return self.prior_sample(self.prior, n, labels=y)

    @property
    def sample_labels(self) -> int:
        """A class picks the prior component its samples come from."""
        return self.config.n_classes

    def sample(self, n: int, labels: Tensor | None = None) -> Tensor:
        """Decode n prior draws, from the components of `labels` (classes) where given."""
        if labels is None:
            return super().sample(n)
        return self.decode(self.prior.sample(n, labels.cpu()).to(self.device))
