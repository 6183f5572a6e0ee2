"""Parts shared by the models with one code z and one prior on it (paper §2, §2.3 and §4; the VAE baseline).

SingleCodeModel owns the prior, the encoder x -> z and the decoder; SingleCodeAAE adds one discriminator
and the two phases of paper §2: reconstruction, then regularisation (discriminator, then generator). A variant
of this kind holds only its config and what differs: what the decoder reads besides z (decoder_input), and
what the discriminator is conditioned on (critic_condition, prior_draw).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from aae.batch import Batch
from aae.networks import Decoder, Encoder, discriminator
from aae.phases import Critic, discriminator_phase, generator_phase, reconstruction_phase
from aae.priors import GaussianPrior, build_prior
from aae.variants.base import AAEModel, AdversarialConfig, CodeConfig, NetworkConfig, Readout


class SingleCodeModel(AAEModel):
    """Prior, encoder x -> z and a decoder reading decoder_input(z, y); subclasses add the training phases."""

    config_class: type[NetworkConfig]

    def __init__(self, config: CodeConfig) -> None:
        super().__init__(config)
        c = config
        self.prior = build_prior(c.prior, dim=c.z_dim, **c.prior_params)
        self.check_prior()
        self.encoder = Encoder(c.input_dim, c.z_dim, c.hidden, c.encoder, network=c.network, init_std=c.init_std)
        self.decoder = Decoder(self.decoder_input_dim, c.input_dim, c.hidden, c.network, c.init_std)

    def check_prior(self) -> None:
        """Raise ValueError if the built prior does not suit the variant (any prior does by default)."""

    @property
    def decoder_input_dim(self) -> int:
        """Width of decoder_input(z, y)."""
        return self.config.z_dim

    def decoder_input(self, z: Tensor, y: Tensor | None) -> Tensor:
        """What the decoder reads for codes z (and labels y, where the decoder reads them): z."""
        return z

    @torch.no_grad()
    def read(self, x: Tensor, labels: Tensor | None = None, reconstruct: bool = False) -> Readout:
        """z is the code and the embedding; the reconstruction decodes decoder_input(z, labels), so a decoder
        that reads labels (the supervised AAE) gives none without them."""
        z = self.infer(x).code
        reconstruction = None
        if reconstruct and (labels is not None or self.decoder_input_dim == self.config.z_dim):
            reconstruction = self.decode(self.decoder_input(z, None if labels is None else labels.to(z.device)))
        return Readout(z, z, None, reconstruction)

    def sample(self, n: int, labels: Tensor | None = None) -> Tensor:
        """Decode n prior draws."""
        self._no_labels_to_sample(labels)
        return self.decode(self.prior.sample(n).to(self.device))


@dataclass
class SingleCodeConfig(AdversarialConfig, CodeConfig):
    """Network, discriminator, code size and prior."""


class SingleCodeAAE(SingleCodeModel):
    """Encoder -> z -> decoder, with one discriminator telling prior samples from codes (paper §2)."""

    config_class = SingleCodeConfig

    def __init__(self, config: SingleCodeConfig) -> None:
        super().__init__(config)
        c = config
        self.discriminator = discriminator(c.z_dim + self.condition_dim, c.disc_hidden, c.init_std, c.disc_init)

    @property
    def condition_dim(self) -> int:
        """Width of critic_condition(y), appended to the discriminator's input."""
        return 0

    def critic_condition(self, y: Tensor | None) -> Tensor | None:
        """What the discriminator reads beside each code (and each prior draw): nothing."""
        return None

    def prior_draw(self, n: int, y: Tensor | None) -> Tensor:
        """n prior draws the discriminator calls real: from the whole prior, whatever the labels."""
        return self.prior_sample(self.prior, n)

    def phase_parameters(self) -> dict[str, list[nn.Parameter]]:
        """Reconstruction: encoder + decoder; discriminator: D; generator: encoder."""
        return {
            "reconstruction": [*self.encoder.parameters(), *self.decoder.parameters()],
            "discriminator": list(self.discriminator.parameters()),
            "generator": list(self.encoder.parameters()),
        }

    def step_labels(self, batch: Batch) -> Tensor | None:
        """The labels a step reads, as label_needs says: none; every row's (checked); or -1 where unlabelled."""
        if self.label_needs == "none":
            return None
        y = batch.y
        if self.label_needs == "all":
            if y is None or bool((y < 0).any()):
                raise ValueError(f"{type(self).__name__} needs a label for every example (label_needs='all')")
            return y
        return y if y is not None else torch.full((len(batch.x),), -1, dtype=torch.long, device=batch.x.device)

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        """Reconstruction, then the discriminator (prior = 1, codes = 0), then the generator (codes = 1)."""
        y = self.step_labels(batch)
        losses = {"recon_loss": self.reconstruction_step(batch.x, y)}
        losses.update(self.regularisation_step(batch.x, y))
        return losses

    def reconstruction_step(self, x: Tensor, y: Tensor | None) -> Tensor:
        """One optimiser step of the reconstruction phase; returns its loss."""
        z = self.encoder(x, self.generator).code
        return reconstruction_phase(self.decoder(self.decoder_input(z, y)), x, self.optimizer("reconstruction"),
                                    self.grad_sync, self.config.recon_loss)

    def regularisation_step(self, x: Tensor, y: Tensor | None) -> dict[str, Tensor]:
        """One step of the discriminator, then one of the generator (the encoder); returns both losses."""
        rng, noise = self.generator, self.config.disc_noise_std
        condition = self.critic_condition(y)
        with torch.no_grad():
            codes = self.encoder(x, rng).code
        real = self.prior_draw(len(x), y)
        (disc,) = discriminator_phase([Critic(self.discriminator, real, codes, condition)],
                                      self.optimizer("discriminator"), self.grad_sync, noise, rng)
        fake = self.encoder(x, rng).code
        (gen,) = generator_phase([Critic(self.discriminator, None, fake, condition)],
                                 self.optimizer("generator"), self.grad_sync, noise, rng)
        return {"disc_loss": disc, "gen_loss": gen}

    def style(self, x: Tensor) -> tuple[Tensor, float] | None:
        """The code and its prior's std where the prior is Gaussian."""
        return (self.infer(x).code, self.prior.std) if isinstance(self.prior, GaussianPrior) else None
