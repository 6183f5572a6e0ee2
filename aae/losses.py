"""Loss functions. Reconstruction is summed over pixels and averaged over the batch (the paper's recipe)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

RECON_LOSSES = ("bce", "mse")


def reconstruction_loss(logits: Tensor, x: Tensor, kind: str = "bce") -> Tensor:
    """Binary cross-entropy (or squared error) summed over pixels, averaged over the batch."""
    logits, x = logits.flatten(1), x.flatten(1)
    if kind == "bce":
        # On logits rather than sigmoid outputs: the same loss, without log(0) when a pixel saturates.
        per_pixel = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    elif kind == "mse":
        per_pixel = (torch.sigmoid(logits) - x) ** 2
    else:
        raise ValueError(f"reconstruction loss {kind!r} is not one of {RECON_LOSSES}")
    return per_pixel.sum(1).mean()


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """BCE over prior samples (real, target 1) and codes (fake, target 0); ln 2 at chance."""
    logits = torch.cat([real_logits, fake_logits])
    targets = torch.cat([torch.ones_like(real_logits), torch.zeros_like(fake_logits)])
    return F.binary_cross_entropy_with_logits(logits, targets)


def generator_loss(fake_logits: Tensor) -> Tensor:
    """BCE that labels the codes real (target 1): the encoder's loss for fooling the discriminator."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def cluster_head_hinge(heads: Tensor, eta: float) -> Tensor:
    """Σ over pairs of max(0, η − ‖h_i − h_j‖): minimising it maximises Σ min(‖h_i − h_j‖, η)."""
    i, j = torch.triu_indices(len(heads), len(heads), offset=1, device=heads.device)
    # The epsilon keeps the gradient finite if two heads ever coincide.
    distances = ((heads[i] - heads[j]).pow(2).sum(1) + 1e-12).sqrt()
    return F.relu(eta - distances).sum()


def gaussian_kl(mean: Tensor, logvar: Tensor, prior_mean: Tensor | float = 0.0,
                prior_std: Tensor | float = 1.0) -> Tensor:
    """Closed-form KL(N(mean, exp(logvar)) || N(prior_mean, prior_std²)) per row, summed over dims."""
    prior_var = torch.as_tensor(prior_std, dtype=mean.dtype, device=mean.device) ** 2
    prior_mean = torch.as_tensor(prior_mean, dtype=mean.dtype, device=mean.device)
    kl = 0.5 * (prior_var.log() - logvar + (logvar.exp() + (mean - prior_mean) ** 2) / prior_var - 1)
    return kl.sum(1)


def monte_carlo_kl(code: Tensor, mean: Tensor, logvar: Tensor, prior_log_prob: Callable[[Tensor], Tensor]
                   ) -> Tensor:
    """One-sample KL estimate log q(code|x) − log p(code) per row, for priors without a closed form."""
    log_q = -0.5 * ((code - mean) ** 2 / logvar.exp() + logvar + math.log(2 * math.pi)).sum(1)
    return log_q - prior_log_prob(code)
