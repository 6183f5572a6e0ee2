"""Semi-supervised AAE (paper §5): y is the class, z the style; a third phase fits q(y|x) to the labels.

Defaults are the paper's recipe taken literally (paper §5; benchmarks/results/semisup-1000-61ep.md sets a
61-epoch run with 1000 labels beside a reference run of the same recipe).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from aae.variants.categorical import CategoricalAAE, CategoricalConfig


@dataclass
class SemiSupervisedConfig(CategoricalConfig):
    """Number of classes (the y head's size)."""

    n_classes: int = 10

    FIELD_DOCS: ClassVar[dict[str, str]] = {"n_classes": "the number of classes (y's size)"}


class SemiSupervisedAAE(CategoricalAAE):
    """The semi-supervised AAE; classify(x) gives q(y|x). The labelled examples are batch.x_labelled /
    y_labelled, else the rows of batch.x with y >= 0."""

    config_class = SemiSupervisedConfig
    label_needs = "some"
    y_head = "classes"

    def __init__(self, config: SemiSupervisedConfig) -> None:
        super().__init__(config, n_categories=config.n_classes)
