"""Parts shared by the semi-supervised, clustering and dimensionality-reduction AAEs (paper §5-7).

The encoder has a softmax y head and a z head on one trunk; the decoder reads representation(y, z);
one discriminator matches y to a uniform one-hot prior and another matches z to N(0, z_prior_std² I).
A training step is reconstruction_step, regularisation_step, then supervised_step where the variant uses
labels; a variant module holds its config, the number of categories, what its y head gives (y_head) and what
differs (the representation, a penalty joining the reconstruction step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from aae.batch import Batch
from aae.metrics import category_log_odds
from aae.networks import Decoder, Encoder, discriminator
from aae.phases import Critic, discriminator_phase, generator_phase, reconstruction_phase, supervised_phase
from aae.priors import CategoricalPrior, GaussianPrior, one_hot
from aae.variants.base import AAEModel, AdversarialConfig, Readout, _check


@dataclass
class CategoricalConfig(AdversarialConfig):
    """Style code size and the std of its Gaussian prior (the paper's 10 and 5)."""

    z_dim: int = 10
    z_prior_std: float = 5.0
    y_batchnorm: bool = False  # BatchNorm on the y logits (not in the paper; see aae.networks.Encoder)
    # y times y_scale where the decoder reads it (not in the paper): a one-hot y beside a z of std z_prior_std
    # reaches the decoder's first layer z_prior_std times fainter, so the decoder learns to read z first.
    y_scale: float = 1.0
    # The share of each batch whose style z is set to 0 (the prior's mode) in the reconstruction phase (not in
    # the paper): the decoder must then draw those digits from y alone, so decoding (y_i, z = 0), the cluster
    # head, learns to show cluster i's digit, and y receives the reconstruction gradient z would otherwise take.
    style_drop: float = 0.0

    FIELD_DOCS: ClassVar[dict[str, str]] = {
        "z_dim": "the size of the style code z",
        "z_prior_std": "the std of z's Gaussian prior",
        "y_batchnorm": "BatchNorm on the y logits before the softmax (keeps every category in use)",
        "y_scale": "y is multiplied by this where the decoder reads it",
        "style_drop": "the share of each reconstruction batch decoded with z = 0, from y alone",
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.y_scale > 0, "y_scale must be positive")
        _check(0 <= self.style_drop < 1, "style_drop must be in [0, 1)")


class CategoricalAAE(AAEModel):
    """Encoder with y (softmax) and z heads, decoder on representation(y, z), discriminators on y and z."""

    embeds_representation = False  # read(): whether the embedding is representation(y, z) rather than z

    def __init__(self, config: CategoricalConfig, n_categories: int, representation_dim: int | None = None) -> None:
        """representation_dim defaults to [y, z]'s width."""
        super().__init__(config)
        # Each subclass states y_head (so it can be read off the class, see AAEModel); it must say what training
        # makes of y: classes when the supervised phase fits y to labels, clusters otherwise.
        head = "classes" if self.uses_labels else "clusters"
        if self.y_head != head:
            raise TypeError(f"{type(self).__name__} sets y_head={self.y_head!r}; with label_needs="
                            f"{self.label_needs!r} its y head gives {head!r}")
        c = config
        self.n_categories = n_categories
        self.y_prior = CategoricalPrior(n_categories)
        self.z_prior = GaussianPrior(c.z_dim, c.z_prior_std)
        self.encoder = Encoder(c.input_dim, c.z_dim, c.hidden, c.encoder, logits_dim=n_categories,
                               network=c.network, init_std=c.init_std, logits_batchnorm=c.y_batchnorm)
        representation_dim = n_categories + c.z_dim if representation_dim is None else representation_dim
        self.decoder = Decoder(representation_dim, c.input_dim, c.hidden, c.network, c.init_std)
        self.disc_y = discriminator(n_categories, c.disc_hidden, c.init_std, c.disc_init)
        self.disc_z = discriminator(c.z_dim, c.disc_hidden, c.init_std, c.disc_init)

    @property
    def uses_labels(self) -> bool:
        """Whether the supervised phase fits q(y|x) to labels (the loader then supplies some)."""
        return self.label_needs != "none"

    def representation(self, y: Tensor, z: Tensor) -> Tensor:
        """What the decoder reads: [y_scale · y, z] (the dimensionality-reduction AAE overrides this)."""
        return torch.cat([self.config.y_scale * y, z], 1)

    def phase_parameters(self) -> dict[str, list[nn.Parameter]]:
        """Reconstruction: everything but the discriminators; discriminator: both; generator: encoder."""
        discs = {*self.disc_y.parameters(), *self.disc_z.parameters()}
        phases = {
            "reconstruction": [p for p in self.parameters() if p not in discs],
            "discriminator": [*self.disc_y.parameters(), *self.disc_z.parameters()],
            "generator": list(self.encoder.parameters()),
        }
        if self.uses_labels:
            phases["supervised"] = list(self.encoder.parameters())
        return phases

    def reconstruction_penalties(self) -> dict[str, Tensor]:
        """Extra losses (by name) that join the reconstruction step; none by default."""
        return {}

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        """Reconstruction (+ any penalties); both discriminators; the generator; cross-entropy on the labelled
        examples if the variant uses labels (skipped for a batch without any)."""
        penalties = self.reconstruction_penalties()
        penalty = torch.stack(list(penalties.values())).sum() if penalties else None
        losses = {"recon_loss": self.reconstruction_step(batch.x, penalty)}
        losses.update({name: loss.detach() for name, loss in penalties.items()})
        losses.update(self.regularisation_step(batch.x))
        if self.uses_labels:
            losses.update(self.supervised_step(batch))
        return losses

    def reconstruction_step(self, x: Tensor, penalty: Tensor | None = None) -> Tensor:
        """One optimiser step of the reconstruction phase through representation(softmax(y), z), z set to 0 for a
        style_drop share of the rows; `penalty` joins the same step. Returns the reconstruction loss."""
        out = self.encoder(x, self.generator)
        z = out.code
        if self.config.style_drop > 0:
            kept = torch.rand(len(z), 1, generator=self.generator, device=z.device) >= self.config.style_drop
            z = z * kept
        logits = self.decoder(self.representation(out.logits.softmax(1), z))
        return reconstruction_phase(logits, x, self.optimizer("reconstruction"), self.grad_sync,
                                    self.config.recon_loss, penalty)

    def regularisation_step(self, x: Tensor) -> dict[str, Tensor]:
        """One step of both discriminators (prior = 1, codes = 0), then one of the encoder fooling both (codes
        labelled 1)."""
        n, rng, noise = len(x), self.generator, self.config.disc_noise_std
        with torch.no_grad():
            out = self.encoder(x, rng)
        critics = [Critic(self.disc_y, self.prior_sample(self.y_prior, n), out.logits.softmax(1)),
                   Critic(self.disc_z, self.prior_sample(self.z_prior, n), out.code)]
        disc_y, disc_z = discriminator_phase(critics, self.optimizer("discriminator"), self.grad_sync, noise, rng)
        out = self.encoder(x, rng)
        critics = [Critic(self.disc_y, None, out.logits.softmax(1)), Critic(self.disc_z, None, out.code)]
        gen_y, gen_z = generator_phase(critics, self.optimizer("generator"), self.grad_sync, noise, rng)
        return {"disc_y_loss": disc_y, "disc_z_loss": disc_z, "gen_y_loss": gen_y, "gen_z_loss": gen_z}

    def supervised_step(self, batch: Batch) -> dict[str, Tensor]:
        """One step on the cross-entropy of q(y|x) on the batch's labelled examples; nothing if it has none."""
        labelled = batch.labelled()
        if labelled is None:
            return {}
        x, y = labelled
        logits = self.encoder(x, self.generator).logits
        return {"supervised_loss": supervised_phase(logits, y, self.optimizer("supervised"), self.grad_sync)}

    def classify(self, x: Tensor) -> Tensor:
        """q(y|x): class (or cluster) probabilities."""
        return self.infer(x).logits.softmax(1)

    def category_log_odds(self, x: Tensor) -> Tensor:
        """log(q / (1 - q)) of each category's q(y|x), computed from the logits (no saturation at q = 1)."""
        return category_log_odds(self.infer(x).logits)

    def cluster(self, x: Tensor) -> Tensor:
        """The category index of each row: argmax q(y|x)."""
        return self.classify(x).argmax(1)

    def style(self, x: Tensor) -> tuple[Tensor, float]:
        """z, whose prior is N(0, z_prior_std² I)."""
        return self.infer(x).code, self.z_prior.std

    def decoded_heads(self) -> Tensor:
        """Each category decoded with the style z = 0: (categories, pixels), the paper's cluster heads (§6: the
        first column of its clustering figure). They show distinct digits only when the decoder reads y."""
        k, on = self.n_categories, self.device
        return self.decode(self.representation(torch.eye(k, device=on), torch.zeros(k, self.config.z_dim, device=on)))

    def render_as_each_category(self, x: Tensor) -> Tensor:
        """Each row's style z decoded with every one-hot category: (N, categories, pixels), the style grid."""
        z = self.infer(x).code
        m = self.n_categories
        one_hot = torch.eye(m, device=z.device).repeat(len(z), 1)
        return self.decode(self.representation(one_hot, z.repeat_interleave(m, 0))).reshape(len(z), m, -1)

    def encode(self, x: Tensor) -> Tensor:
        """The decoder's input for each row: representation(softmax(y), z)."""
        out = self.infer(x)
        return self.representation(out.logits.softmax(1), out.code)

    @torch.no_grad()
    def read(self, x: Tensor, labels: Tensor | None = None, reconstruct: bool = False) -> Readout:
        """q(y|x) and the style z from one encoder pass; the code is representation(q(y|x), z), the embedding z
        (the n-D map where the representation is one: embeds_representation)."""
        out = self.infer(x)
        probabilities = out.logits.softmax(1)
        code = self.representation(probabilities, out.code)
        embedding = code if self.embeds_representation else out.code
        return Readout(code, embedding, probabilities, self.decode(code) if reconstruct else None)

    @property
    def sample_labels(self) -> int:
        """The category (class or cluster) each sample's y is set to."""
        return self.n_categories

    def sample(self, n: int, labels: Tensor | None = None) -> Tensor:
        """Decode n draws of (one-hot y, z) from the two priors, y set to `labels` (categories) where given."""
        y = self.y_prior.sample(n) if labels is None else one_hot(labels.cpu(), self.n_categories)
        with torch.no_grad():
            code = self.representation(y, self.z_prior.sample(n)).to(self.device)
        return self.decode(code)
