"""Unsupervised AAE (paper §2-3): the codes' aggregated posterior is matched to any prior."""

from __future__ import annotations

from dataclasses import dataclass

from aae.variants.single_code import SingleCodeAAE, SingleCodeConfig


@dataclass
class UnsupervisedConfig(SingleCodeConfig):
    """A 2-D code under a Gaussian prior by default."""


class UnsupervisedAAE(SingleCodeAAE):
    """Encoder -> z -> decoder, with one discriminator telling prior samples from codes."""

    config_class = UnsupervisedConfig
    label_needs = "none"
