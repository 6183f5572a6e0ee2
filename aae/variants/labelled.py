"""The config the single-code variants that read class labels share (supervised and label-regularised)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from aae.variants.base import _check
from aae.variants.single_code import SingleCodeConfig


@dataclass
class LabelledConfig(SingleCodeConfig):
    """The number of classes, and the one-hot label's magnitude where the model reads it."""

    n_classes: int = 10
    # Not in the paper. For the supervised AAE, at 1, against a style code of std 1-5, the decoder learns to
    # take the class from z and ignores y (docs/deviations.md).
    y_scale: float = 1.0

    FIELD_DOCS: ClassVar[dict[str, str]] = {
        "n_classes": "the number of classes",
        "y_scale": "the one-hot label is multiplied by this where the model reads it",
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.y_scale > 0, "y_scale must be positive")
