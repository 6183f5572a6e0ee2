"""Per-phase optimiser settings (the paper's SGD recipe by default) and the helper that builds them."""

from __future__ import annotations

from collections.abc import Mapping
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


@dataclass
class OptimConfig:
    """Learning rate and momentum per training phase, the step decay, and the optimiser kind.

    `lr` and `momentum` map phases (from PHASES) to values; a phase left out, or mapped to None, takes the
    default for `kind` (the paper's SGD recipe for "sgd"). Momenta are ignored by Adam, which uses
    `adam_betas`. Every rate is multiplied by `decay_factor` once each epoch in `decay_epochs` has been completed.
    """

    kind: str = "sgd"
    lr: dict[str, float] = field(default_factory=dict)  # phase -> initial learning rate
    momentum: dict[str, float] = field(default_factory=dict)  # phase -> SGD momentum
    decay_epochs: tuple[int, ...] = (50, 1000)
    decay_factor: float = 0.1
    adam_betas: tuple[float, float] = (0.5, 0.999)
    clip_grad_norm: dict[str, float] = field(default_factory=dict)  # phase -> max gradient norm; absent = off

    def __post_init__(self) -> None:
        if self.kind not in DEFAULT_LR:
            raise ValueError(f"optimiser kind {self.kind!r} is not one of {sorted(DEFAULT_LR)}")
        self.decay_epochs = tuple(int(e) for e in self.decay_epochs)
        self.adam_betas = (float(self.adam_betas[0]), float(self.adam_betas[1]))
        self.lr = _every_phase("lr", self.lr, DEFAULT_LR[self.kind])
        self.momentum = _every_phase("momentum", self.momentum, DEFAULT_MOMENTUM)
        for phase, rate in self.lr.items():
            if rate <= 0:
                raise ValueError(f"lr[{phase!r}] must be positive, got {rate}")
        if not 0 < self.decay_factor <= 1:
            raise ValueError("decay_factor must be in (0, 1]")
        _check_phases("clip_grad_norm", self.clip_grad_norm)
        self.clip_grad_norm = {phase: float(norm) for phase, norm in self.clip_grad_norm.items() if norm is not None}
        for phase, norm in self.clip_grad_norm.items():
            if norm <= 0:
                raise ValueError(f"clip_grad_norm needs positive norms, got {phase}={norm}")


def _check_phases(name: str, per_phase: Mapping[str, float | None]) -> None:
    """Reject a per-phase setting that names a phase no model trains (a typo would otherwise be ignored)."""
    unknown = sorted(set(per_phase) - set(PHASES))
    if unknown:
        raise ValueError(f"{name} names unknown phases {unknown}; the phases are {PHASES}")


def _every_phase(name: str, given: Mapping[str, float | None], defaults: Mapping[str, float]) -> dict[str, float]:
    """`given` for every phase in PHASES, a phase that is missing or None taking its value from `defaults`."""
    _check_phases(name, given)
    return {phase: float(defaults[phase] if given.get(phase) is None else given[phase]) for phase in PHASES}


def build_optimizer(params: list[nn.Parameter], config: OptimConfig, phase: str
                    ) -> tuple[Optimizer, LRScheduler]:
    """An optimiser for one phase's parameters and its step-decay schedule (stepped once per epoch)."""
    if config.kind == "sgd":
        optimizer: Optimizer = torch.optim.SGD(params, lr=config.lr[phase], momentum=config.momentum[phase])
    else:
        optimizer = torch.optim.Adam(params, lr=config.lr[phase], betas=config.adam_betas)
    # Read by aae.phases.optimizer_step; an attribute rather than a param-group entry, so a checkpoint's
    # optimiser state (restored after the optimisers are rebuilt from this config) cannot drop it.
    optimizer.clip_grad_norm = config.clip_grad_norm.get(phase)  # type: ignore[attr-defined]
    return optimizer, MultiStepLR(optimizer, milestones=list(config.decay_epochs), gamma=config.decay_factor)
