"""VAE baseline (the paper's comparison, §2.1): one joint loss, reconstruction + KL to the prior.

The KL is analytic for a Gaussian prior; any prior with `log_prob` (the mixture) gets a one-sample
Monte Carlo estimate instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from aae.batch import Batch
from aae.losses import gaussian_kl, monte_carlo_kl
from aae.networks import EncoderOutput
from aae.phases import reconstruction_phase
from aae.priors import GaussianPrior
from aae.variants.base import CodeConfig, NetworkConfig
from aae.variants.single_code import SingleCodeModel


@dataclass
class VAEConfig(NetworkConfig, CodeConfig):
    """A VAE needs a Gaussian-posterior encoder; the prior is built with dim=z_dim."""

    encoder: str = "gaussian"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.encoder != "gaussian":
            raise ValueError("the VAE needs encoder='gaussian'")


class VAE(SingleCodeModel):
    """Gaussian encoder, decoder, KL regulariser; trained in the reconstruction phase only."""

    config_class = VAEConfig
    label_needs = "none"

    def check_prior(self) -> None:
        """The KL needs a Gaussian prior (closed form) or a log_prob (Monte Carlo)."""
        if not isinstance(self.prior, GaussianPrior) and not hasattr(self.prior, "log_prob"):
            raise ValueError(f"the VAE needs a Gaussian prior or one with log_prob; {self.config.prior!r} has neither")

    def phase_parameters(self) -> dict[str, list[nn.Parameter]]:
        """One phase: encoder + decoder on reconstruction + KL."""
        return {"reconstruction": [*self.encoder.parameters(), *self.decoder.parameters()]}

    def kl(self, out: EncoderOutput) -> Tensor:
        """KL(q(z|x) || p(z)) per row: closed form for a Gaussian prior, else Monte Carlo."""
        if isinstance(self.prior, GaussianPrior):
            return gaussian_kl(out.mean, out.logvar, self.prior.mean, self.prior.std)
        return monte_carlo_kl(out.code, out.mean, out.logvar, self.prior.log_prob)

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        """One step on reconstruction + KL (averaged over the batch, like the reconstruction)."""
        x = batch.x
        out = self.encoder(x, self.generator)
        kl = self.kl(out).mean()
        recon = reconstruction_phase(self.decoder(out.code), x, self.optimizer("reconstruction"),
                                     self.grad_sync, self.config.recon_loss, penalty=kl)
        return {"recon_loss": recon, "kl_loss": kl.detach()}
