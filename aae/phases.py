"""The named phases a training step is made of. Each takes its optimiser explicitly and returns its losses as
detached 0-dim tensors on the model's device: reading them (float()) waits for the device, so the training
loop sums them there and reads the sums once per epoch, and a CUDA graph can capture a whole step.

grad_sync, when set (data-parallel training), receives the phase's parameters that have gradients,
after backward and before the optimiser step, and must average those gradients across workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer

from aae.losses import discriminator_loss, generator_loss, reconstruction_loss

GradSync = Callable[[list[nn.Parameter]], None]


@dataclass
class Critic:
    """One discriminator with this batch's prior samples (real) and encoder codes (fake)."""

    net: nn.Module
    real: Tensor | None  # not needed by the generator phase
    fake: Tensor
    condition: Tensor | None = None  # appended to both inputs (the label-regularised AAE's one-hot)


def optimizer_step(loss: Tensor, optimizer: Optimizer, grad_sync: GradSync | None = None) -> Tensor:
    """zero_grad, backward, grad_sync (if set), clip (if the optimiser has a clip_grad_norm), step; returns
    the loss, detached."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if grad_sync is not None:
        grad_sync(params)
    max_norm = getattr(optimizer, "clip_grad_norm", None)
    if max_norm is not None:  # after the all-reduce, so every worker clips the same averaged gradient
        torch.nn.utils.clip_grad_norm_(params, max_norm)
    optimizer.step()
    return loss.detach()


def reconstruction_phase(logits: Tensor, x: Tensor, optimizer: Optimizer, grad_sync: GradSync | None = None,
                         kind: str = "bce", penalty: Tensor | None = None) -> Tensor:
    """Update encoder + decoder on the reconstruction loss (plus an optional penalty); returns the recon loss."""
    recon = reconstruction_loss(logits, x, kind)
    optimizer_step(recon if penalty is None else recon + penalty, optimizer, grad_sync)
    return recon.detach()


def _critic_input(t: Tensor, condition: Tensor | None, noise_std: float,
                  generator: torch.Generator | None) -> Tensor:
    if noise_std > 0:  # input noise on the discriminator stabilised training in reproductions
        t = t + noise_std * torch.randn(t.shape, generator=generator, device=t.device, dtype=t.dtype)
    return t if condition is None else torch.cat([t, condition], 1)


def discriminator_phase(critics: Sequence[Critic], optimizer: Optimizer, grad_sync: GradSync | None = None,
                        noise_std: float = 0.0, generator: torch.Generator | None = None) -> list[Tensor]:
    """Update the discriminators: prior samples are real (1), codes fake (0, detached); one loss each."""
    losses = []
    for c in critics:
        if c.real is None:
            raise ValueError("the discriminator phase needs prior samples (Critic.real)")
        real = c.net(_critic_input(c.real, c.condition, noise_std, generator))
        fake = c.net(_critic_input(c.fake.detach(), c.condition, noise_std, generator))
        losses.append(discriminator_loss(real, fake))
    optimizer_step(torch.stack(losses).sum(), optimizer, grad_sync)
    return [loss.detach() for loss in losses]


@contextmanager
def _frozen(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Skip weight gradients of the discriminators while the generator backpropagates through them."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def generator_phase(critics: Sequence[Critic], optimizer: Optimizer, grad_sync: GradSync | None = None,
                    noise_std: float = 0.0, generator: torch.Generator | None = None) -> list[Tensor]:
    """Update the encoder so every discriminator labels its codes real (1); one loss each."""
    with _frozen([c.net for c in critics]):
        losses = [generator_loss(c.net(_critic_input(c.fake, c.condition, noise_std, generator)))
                  for c in critics]
        optimizer_step(torch.stack(losses).sum(), optimizer, grad_sync)
    return [loss.detach() for loss in losses]


def supervised_phase(logits: Tensor, labels: Tensor, optimizer: Optimizer,
                     grad_sync: GradSync | None = None) -> Tensor:
    """Update the encoder's categorical head on cross-entropy against the labels."""
    return optimizer_step(F.cross_entropy(logits, labels), optimizer, grad_sync)
