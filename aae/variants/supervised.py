"""Supervised AAE (paper §5): the decoder gets the one-hot label, so z only has to carry style."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from aae.batch import Batch
from aae.networks import Decoder, Encoder, discriminator
from aae.phases import Critic, discriminator_phase, generator_phase, reconstruction_phase
from aae.priors import GaussianPrior, build_prior, one_hot
from aae.variants.base import AAEModel, AdversarialConfig, _check


@dataclass
class SupervisedConfig(AdversarialConfig):
    """Style code size (the paper: about 15), classes, and the style prior (built with dim=z_dim)."""

    z_dim: int = 15
    n_classes: int = 10
    prior: str = "gaussian"
    prior_params: dict[str, Any] = field(default_factory=dict)
    # The one-hot label's magnitude at the decoder's input (not in the paper): at 1, against a style code
    # of std 1-5, the decoder learns to take the class from z and ignores y (benchmarks/results/fidelity.md).
    y_scale: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.y_scale > 0, "y_scale must be positive")


class SupervisedAAE(AAEModel):
    """Encoder x -> z (style); decoder [one-hot y, z] -> x; one discriminator on z."""

    config_class = SupervisedConfig
    label_needs = "all"

    def __init__(self, config: SupervisedConfig) -> None:
        super().__init__(config)
        c = config
        self.prior = build_prior(c.prior, dim=c.z_dim, **c.prior_params)
        self.encoder = Encoder(c.input_dim, c.z_dim, c.hidden, c.encoder, network=c.network, init_std=c.init_std)
        self.decoder = Decoder(c.n_classes + c.z_dim, c.input_dim, c.hidden, c.network, c.init_std)
        self.discriminator = discriminator(c.z_dim, c.disc_hidden, c.init_std, c.disc_init)

    def phase_parameters(self) -> dict[str, list[nn.Parameter]]:
        """Reconstruction: encoder + decoder; discriminator: D; generator: encoder."""
        return {
            "reconstruction": [*self.encoder.parameters(), *self.decoder.parameters()],
            "discriminator": list(self.discriminator.parameters()),
            "generator": list(self.encoder.parameters()),
        }

    def decoder_input(self, z: Tensor, y: Tensor) -> Tensor:
        """[one-hot y, z], what the decoder reads."""
        return torch.cat([self.config.y_scale * one_hot(y, self.config.n_classes).to(z), z], 1)

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        """Reconstruction from (y, z), then the discriminator and generator on z."""
        x, y, c, rng = batch.x, batch.y, self.config, self.generator
        if y is None or bool((y < 0).any()):
            raise ValueError("the supervised AAE needs a label for every example (label_needs='all')")
        z = self.encoder(x, rng).code
        recon = reconstruction_phase(self.decoder(self.decoder_input(z, y)), x,
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
        """The style code z of each row (decode takes [one-hot y, z]; see decode_with_labels)."""
        return self.infer(x).code

    def decode_with_labels(self, z: Tensor, y: Tensor) -> Tensor:
        """Images for style codes z rendered as classes y."""
        return self.decode(self.decoder_input(z.to(self.device), y.to(self.device)))

    def render_as_each_category(self, x: Tensor) -> Tensor:
        """Each row's style z decoded with every label: (N, classes, pixels), the style grid."""
        z, m = self.encode(x), self.config.n_classes
        labels = torch.arange(m).repeat(len(z))
        return self.decode_with_labels(z.repeat_interleave(m, 0), labels).reshape(len(z), m, -1)

    def reconstruction(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """x through the encoder and back, rendered with its true labels y (required: the decoder reads them)."""
        if y is None:
            raise ValueError("the supervised AAE reconstructs with the true labels: pass y")
        return self.decode_with_labels(self.encode(x), y)

    def sample(self, n: int) -> Tensor:
        """Decode n style draws with uniformly drawn labels."""
        y = torch.randint(self.config.n_classes, (n,))
        return self.decode_with_labels(self.prior.sample(n), y)
