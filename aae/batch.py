"""The mini-batch every variant's training step consumes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Batch:
    """Inputs for one training step.

    x: (B, D) floats in [0, 1], or (B, 3, 32, 32) for the conv networks.
    y: (B,) int64 labels with -1 for unlabelled rows, or None (label-regularised and supervised AAEs).
    x_labelled / y_labelled: a batch drawn from the labelled subset (semi-supervised AAEs), or None.
    """

    x: Tensor
    y: Tensor | None = None
    x_labelled: Tensor | None = None
    y_labelled: Tensor | None = None

    def to(self, device: torch.device | str) -> Batch:
        """Return a copy with every tensor on `device`."""
        return Batch(*(None if t is None else t.to(device) for t in (self.x, self.y, self.x_labelled,
                                                                       self.y_labelled)))

    def labelled(self) -> tuple[Tensor, Tensor] | None:
        """The labelled examples: x_labelled/y_labelled if given, else the rows of x with y >= 0."""
        if self.x_labelled is not None and self.y_labelled is not None:
            return self.x_labelled, self.y_labelled
        if self.y is None:
            return None
        keep = self.y >= 0
        if not bool(keep.any()):
            return None
        return self.x[keep], self.y[keep]
