"""Label-regularised AAE (paper §4): labels choose which part of the prior a code must match.

The discriminator also reads an (n+1)-way one-hot: the example's class, or the extra "unlabelled" entry.
Its real samples come from the class's component (labelled rows) or the whole prior (unlabelled rows),
paired with the same one-hot as the code they stand against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from aae.batch import Batch
from aae.networks import Decoder, Encoder, discriminator
from aae.phases import Critic, discriminator_phase, generator_phase, reconstruction_phase
from aae.priors import build_prior, one_hot
from aae.variants.base import AAEModel, AdversarialConfig, _check


@dataclass
class LabelRegularisedConfig(AdversarialConfig):
    """The prior must have n_classes components (mixture or swiss_roll), built with dim=z_dim."""

    z_dim: int = 2
    n_classes: int = 10
    prior: str = "mixture"
    prior_params: dict[str, Any] = field(default_factory=dict)
    y_scale: float = 1.0  # the one-hot's magnitude at the discriminator's input (not in the paper)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.y_scale > 0, "y_scale must be positive")


class LabelRegularisedAAE(AAEModel):
    """Encoder -> z -> decoder; the discriminator sees (z, one-hot label or "unlabelled")."""

    config_class = LabelRegularisedConfig
    label_needs = "some"

    def __init__(self, config: LabelRegularisedConfig) -> None:
        super().__init__(config)
        c = config
        self.prior = build_prior(c.prior, dim=c.z_dim, **c.prior_params)
        if self.prior.n_components != c.n_classes:
            raise ValueError(f"prior {c.prior!r} has {self.prior.n_components} components, "
                             f"the label-regularised AAE needs n_classes={c.n_classes}")
        self.encoder = Encoder(c.input_dim, c.z_dim, c.hidden, c.encoder, network=c.network, init_std=c.init_std)
        self.decoder = Decoder(c.z_dim, c.input_dim, c.hidden, c.network, c.init_std)
        self.discriminator = discriminator(c.z_dim + c.n_classes + 1, c.disc_hidden, c.init_std, c.disc_init)

    def phase_parameters(self) -> dict[str, list[nn.Parameter]]:
        """Reconstruction: encoder + decoder; discriminator: D; generator: encoder."""
        return {
            "reconstruction": [*self.encoder.parameters(), *self.decoder.parameters()],
            "discriminator": list(self.discriminator.parameters()),
            "generator": list(self.encoder.parameters()),
        }

    def label_code(self, y: Tensor) -> Tensor:
        """(n+1)-way one-hot: the class, or the last ("unlabelled") entry where y is -1."""
        n = self.config.n_classes
        return self.config.y_scale * one_hot(torch.where(y >= 0, y, n), n + 1)

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        """Reconstruction, then the label-conditioned discriminator and generator."""
        x, c, rng = batch.x, self.config, self.generator
        y = batch.y if batch.y is not None else torch.full((len(x),), -1, dtype=torch.long, device=x.device)
        recon = reconstruction_phase(self.decoder(self.encoder(x, rng).code), x,
                                     self.optimizer("reconstruction"), self.grad_sync, c.recon_loss)
        condition = self.label_code(y)
        with torch.no_grad():
            codes = self.encoder(x, rng).code
        real = self.prior_sample(self.prior, len(x), labels=y)
        (disc,) = discriminator_phase([Critic(self.discriminator, real, codes, condition)],
                                      self.optimizer("discriminator"), self.grad_sync, c.disc_noise_std, rng)
        fake = self.encoder(x, rng).code
        (gen,) = generator_phase([Critic(self.discriminator, None, fake, condition)],
                                 self.optimizer("generator"), self.grad_sync, c.disc_noise_std, rng)
        return {"recon_loss": recon, "disc_loss": disc, "gen_loss": gen}

    def encode(self, x: Tensor) -> Tensor:
        """z for each row of x."""
        return self.infer(x).code

    def sample(self, n: int) -> Tensor:
        """Decode n draws from the whole prior."""
        return self.decode(self.prior.sample(n).to(self.device))
