"""Unsupervised AAE (paper §2-3): the codes' aggregated posterior is matched to any prior."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from aae.batch import Batch
from aae.networks import Decoder, Encoder, discriminator
from aae.phases import Critic, discriminator_phase, generator_phase, reconstruction_phase
from aae.priors import GaussianPrior, build_prior
from aae.variants.base import AAEModel, AdversarialConfig


@dataclass
class UnsupervisedConfig(AdversarialConfig):
    """Code size and prior (a registry name or "package.module:Class", built with dim=z_dim)."""

    z_dim: int = 2
    prior: str = "gaussian"
    prior_params: dict[str, Any] = field(default_factory=dict)


class UnsupervisedAAE(AAEModel):
    """Encoder -> z -> decoder, with one discriminator telling prior samples from codes."""

    config_class = UnsupervisedConfig
    label_needs = "none"

    def __init__(self, config: UnsupervisedConfig) -> None:
        super().__init__(config)
        c = config
        self.prior = build_prior(c.prior, dim=c.z_dim, **c.prior_params)
        self.encoder = Encoder(c.input_dim, c.z_dim, c.hidden, c.encoder, network=c.network, init_std=c.init_std)
        self.decoder = Decoder(c.z_dim, c.input_dim, c.hidden, c.network, c.init_std)
        self.discriminator = discriminator(c.z_dim, c.disc_hidden, c.init_std, c.disc_init)

    def phase_parameters(self) -> dict[str, list[nn.Parameter]]:
        """Reconstruction: encoder + decoder; discriminator: D; generator: encoder."""
        return {
            "reconstruction": [*self.encoder.parameters(), *self.decoder.parameters()],
            "discriminator": list(self.discriminator.parameters()),
            "generator": list(self.encoder.parameters()),
        }

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        """Reconstruction, then the discriminator (prior = 1, codes = 0), then the generator (codes = 1)."""
        x, c, rng = batch.x, self.config, self.generator
        recon = reconstruction_phase(self.decoder(self.encoder(x, rng).code), x,
                                     self.optimizer("reconstruction"), self.grad_sync, c.recon_loss)
        with torch.no_grad():
            codes = self.encoder(x, rng).code
        real = self.prior_sample(self.prior, len(x))
        (disc,) = discriminator_phase([Critic(self.discriminator, real, codes)], self.optimizer("discriminator"),
                                      self.grad_sync, c.disc_noise_std, rng)
        (gen,) = generator_phase([Critic(self.discriminator, None, self.encoder(x, rng).code)],
                                 self.optimizer("generator"), self.grad_sync, c.disc_noise_std, rng)
        return {"recon_loss": recon, "disc_loss": disc, "gen_loss": gen}

    def style(self, x: Tensor) -> tuple[Tensor, float] | None:
        """The code and its prior's std where the prior is Gaussian."""
        return (self.infer(x).code, self.prior.std) if isinstance(self.prior, GaussianPrior) else None

    def encode(self, x: Tensor) -> Tensor:
        """z for each row of x."""
        return self.infer(x).code

    def sample(self, n: int) -> Tensor:
        """Decode n prior draws."""
        return self.decode(self.prior.sample(n).to(self.device))
