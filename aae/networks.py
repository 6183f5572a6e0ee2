"""Encoders, decoders and discriminators: MLPs (the paper's 2x1000 ReLU) and a small conv pair for 3x32x32.

Weights start N(0, init_std) with zero biases (the paper's 0.01): with the summed-over-pixels loss and the
paper's rates, PyTorch's default initialisation went to NaN in the first epoch when measured. No batch norm
anywhere: in the encoder or the discriminators it shifted the code space and broke training in public
reproductions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

ENCODER_KINDS = ("deterministic", "gaussian", "universal")
NETWORKS = ("mlp", "conv")
IMAGE_SHAPE = (3, 32, 32)
_CONV_FEATURES = 128 * 4 * 4


def init_weights(module: nn.Module, std: float) -> None:
    """Draw every linear/conv weight from N(0, std) and zero every bias."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int | None = None) -> nn.Sequential:
    """Linear+ReLU for each hidden size, then a linear output layer when out_dim is given."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.ReLU()]
        in_dim = width
    if out_dim is not None:
        layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class _AsImage(nn.Module):
    """Accept flat (B, 3072) or image (B, 3, 32, 32) input for the conv trunk."""

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(len(x), *IMAGE_SHAPE)


def _trunk(network: str, input_dim: int, hidden: Sequence[int]) -> tuple[nn.Module, int]:
    """The encoder body and its feature width."""
    if network == "mlp":
        return nn.Sequential(nn.Flatten(), mlp(input_dim, hidden)), (hidden[-1] if hidden else input_dim)
    convs = nn.Sequential(
        _AsImage(),
        nn.Conv2d(3, 32, 4, 2, 1), nn.ReLU(),
        nn.Conv2d(32, 64, 4, 2, 1), nn.ReLU(),
        nn.Conv2d(64, 128, 4, 2, 1), nn.ReLU(),
        nn.Flatten(),
    )
    return nn.Sequential(convs, mlp(_CONV_FEATURES, hidden)), (hidden[-1] if hidden else _CONV_FEATURES)


@dataclass
class EncoderOutput:
    """What an encoder returns: the code it samples, its posterior moments, and categorical logits."""

    code: Tensor
    mean: Tensor | None = None
    logvar: Tensor | None = None
    logits: Tensor | None = None


class Encoder(nn.Module):
    """x -> code (plus optional categorical logits from a second head on the same trunk).

    kind "deterministic": code = f(x) (the paper's default); "gaussian": code ~ N(mean(x), exp(logvar(x)))
    by reparameterisation; "universal": code = f(x, noise), noise ~ N(0, I) concatenated to the input.
    """

    def __init__(self, input_dim: int, code_dim: int, hidden: Sequence[int] = (1000, 1000),
                 kind: str = "deterministic", logits_dim: int = 0, network: str = "mlp",
                 init_std: float = 0.01, noise_dim: int = 16, logits_batchnorm: bool = False) -> None:
        super().__init__()
        if kind not in ENCODER_KINDS or network not in NETWORKS:
            raise ValueError(f"encoder kind must be one of {ENCODER_KINDS}, network one of {NETWORKS}")
        if kind == "universal" and network != "mlp":
            raise ValueError("the universal-approximator encoder needs network='mlp'")
        self.kind, self.code_dim = kind, code_dim
        self.noise_dim = noise_dim if kind == "universal" else 0
        self.trunk, width = _trunk(network, input_dim + self.noise_dim, hidden)
        self.code_head = nn.Linear(width, 2 * code_dim if kind == "gaussian" else code_dim)
        self.logits_head = nn.Linear(width, logits_dim) if logits_dim else None
        init_weights(self, init_std)
        # Each category's logit normalised over the batch: every category gets the same batch statistics, so
        # argmax cannot settle on a few categories (the learnable scale still lets softmax(y) sharpen).
        self.logits_norm = nn.BatchNorm1d(logits_dim) if logits_dim and logits_batchnorm else None

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> EncoderOutput:
        """Encode a batch; `generator` (on x's device) drives the posterior / input noise."""
        if self.noise_dim:
            noise = torch.randn(len(x), self.noise_dim, generator=generator, device=x.device, dtype=x.dtype)
            x = torch.cat([x.flatten(1), noise], 1)
        h = self.trunk(x)
        logits = None if self.logits_head is None else self.logits_head(h)
        if self.logits_norm is not None:
            logits = self.logits_norm(logits)
        out = self.code_head(h)
        if self.kind != "gaussian":
            return EncoderOutput(code=out, logits=logits)
        mean, logvar = out.chunk(2, dim=1)
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return EncoderOutput(code=mean + eps * (0.5 * logvar).exp(), mean=mean, logvar=logvar, logits=logits)


class Decoder(nn.Module):
    """code -> pixel logits (the sigmoid is applied by the loss and by model.decode)."""

    def __init__(self, code_dim: int, output_dim: int, hidden: Sequence[int] = (1000, 1000),
                 network: str = "mlp", init_std: float = 0.01) -> None:
        super().__init__()
        if network not in NETWORKS:
            raise ValueError(f"network must be one of {NETWORKS}")
        if network == "mlp":
            self.net: nn.Module = mlp(code_dim, list(reversed(hidden)), output_dim)
        else:
            self.net = nn.Sequential(
                mlp(code_dim, list(reversed(hidden)), _CONV_FEATURES), nn.ReLU(),
                nn.Unflatten(1, (128, 4, 4)),
                nn.ConvTranspose2d(128, 64, 4, 2, 1), nn.ReLU(),
                nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU(),
                nn.ConvTranspose2d(32, 3, 4, 2, 1),
            )
        init_weights(self, init_std)

    def forward(self, code: Tensor) -> Tensor:
        """Logits with the shape of the input images ((B, D), or (B, 3, 32, 32) for conv)."""
        return self.net(code)


DISC_INITS = ("normal", "he")


def discriminator(in_dim: int, hidden: Sequence[int] = (1000, 1000), init_std: float = 0.01, init: str = "normal"
                  ) -> nn.Module:
    """An MLP giving one logit per row: high means "drawn from the prior".

    init "normal" draws every weight from N(0, init_std) (the paper's recipe); "he" scales each layer by
    its fan-in (Kaiming normal), which keeps a discriminator on a low-dimensional code learning from the
    first step: with N(0, 0.01) on a 2-D input its output starts flat and its gradients vanish.
    """
    net = nn.Sequential(mlp(in_dim, hidden, 1), nn.Flatten(0))
    if init == "normal":
        init_weights(net, init_std)
    elif init == "he":
        for layer in net.modules():
            if isinstance(layer, nn.Linear):
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                nn.init.zeros_(layer.bias)
    else:
        raise ValueError(f"discriminator init {init!r} is not one of {DISC_INITS}")
    return net
