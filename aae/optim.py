"""Per-phase optimiser settings (the paper's SGD recipe by default) and the helper that builds them."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, MultiStepLR

PHASES = ("reconstruction", "discriminator", "generator", "supervised")

# The paper's SGD recipe (two phases per batch, paper §2; the per-phase rates its reproductions agree on)
# and, for kind="adam", the rates measured on this machine.
DEFAULT_LR = {
    "sgd": {"reconstruction": 0.01, "discriminator": 0.1, "generator": 0.1, "supervised": 0.1},
    "adam": {"reconstruction": 3e-4, "discriminator": 1e-4, "generator": 1e-4, "supervised": 3e-4},
}
DEFAULT_MOMENTUM = {"reconstruction": 0.9, "discriminator": 0.1, "generator": 0.1, "supervised": 0.9}
_PREFIX = {"reconstruction": "recon", "discriminator": "disc", "generator": "gen", "supervised": "supervised"}


@dataclass
class OptimConfig:
    """Learning rate and momentum per training phase, the step decay, and the optimiser kind.

    A rate or momentum left at None takes the default for `kind` (the paper's SGD recipe for "sgd").
    Momenta are ignored by Adam, which uses `adam_betas`. Every rate is multiplied by `decay_factor`
    once each epoch in `decay_epochs` has been completed.
    """

    kind: str = "sgd"
    recon_lr: float | None = None
    recon_momentum: float | None = None
    disc_lr: float | None = None
    disc_momentum: float | None = None
    gen_lr: float | None = None
    gen_momentum: float | None = None
    supervised_lr: float | None = None
    supervised_momentum: float | None = None
    decay_epochs: tuple[int, ...] = (50, 1000)
    decay_factor: float = 0.1
    adam_betas: tuple[float, float] = (0.5, 0.999)
    clip_grad_norm: dict[str, float] = field(default_factory=dict)  # phase -> max gradient norm; absent = off

    def __post_init__(self) -> None:
        if self.kind not in DEFAULT_LR:
            raise ValueError(f"optimiser kind {self.kind!r} is not one of {sorted(DEFAULT_LR)}")
        self.decay_epochs = tuple(int(e) for e in self.decay_epochs)
        self.adam_betas = (float(self.adam_betas[0]), float(self.adam_betas[1]))
        for phase, prefix in _PREFIX.items():
            if getattr(self, f"{prefix}_lr") is None:
                setattr(self, f"{prefix}_lr", DEFAULT_LR[self.kind][phase])
            if getattr(self, f"{prefix}_momentum") is None:
                setattr(self, f"{prefix}_momentum", DEFAULT_MOMENTUM[phase])
            if getattr(self, f"{prefix}_lr") <= 0:
                raise ValueError(f"{prefix}_lr must be positive")
        if not 0 < self.decay_factor <= 1:
            raise ValueError("decay_factor must be in (0, 1]")
        self.clip_grad_norm = {phase: float(norm) for phase, norm in self.clip_grad_norm.items() if norm is not None}
        for phase, norm in self.clip_grad_norm.items():
            if phase not in PHASES or norm <= 0:
                raise ValueError(f"clip_grad_norm needs phases from {PHASES} and positive norms, got {phase}={norm}")

    def lr(self, phase: str) -> float:
        """The initial learning rate of `phase`."""
        return getattr(self, f"{_PREFIX[phase]}_lr")

    def momentum(self, phase: str) -> float:
        """The SGD momentum of `phase`."""
        return getattr(self, f"{_PREFIX[phase]}_momentum")


def build_optimizer(params: list[nn.Parameter], config: OptimConfig, phase: str
                    ) -> tuple[Optimizer, LRScheduler]:
    """An optimiser for one phase's parameters and its step-decay schedule (stepped once per epoch)."""
    if config.kind == "sgd":
        optimizer: Optimizer = torch.optim.SGD(params, lr=config.lr(phase), momentum=config.momentum(phase))
    else:
        optimizer = torch.optim.Adam(params, lr=config.lr(phase), betas=config.adam_betas)
    # Read by aae.phases.optimizer_step; an attribute rather than a param-group entry, so a checkpoint's
    # optimiser state (restored after the optimisers are rebuilt from this config) cannot drop it.
    optimizer.clip_grad_norm = config.clip_grad_norm.get(phase)  # type: ignore[attr-defined]
    return optimizer, MultiStepLR(optimizer, milestones=list(config.decay_epochs), gamma=config.decay_factor)
