"""Priors p(z) the adversarial regulariser matches the codes to: anything with a sampler will do.

Add a prior by writing a class with `dim`, `n_components` and `sample(n, labels=None, generator=None)`,
whose constructor takes `dim=` as a keyword, and registering it in PRIORS (or pass its import path,
"package.module:ClassName", to build_prior). Samples are drawn on the generator's device (the CPU without
one). A prior with
components may also have `locate(z) -> (component, on_prior)`: the evaluate stage then reports how well the
codes fill it (aae.metrics.components_fit).
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from aae.registry import resolve


@runtime_checkable
class Prior(Protocol):
    """A distribution over codes that can be sampled, optionally one labelled component per row."""

    dim: int
    n_components: int  # 0 when the prior has no components a label could select

    def sample(self, n: int, labels: Tensor | None = None, generator: torch.Generator | None = None
               ) -> Tensor:
        """n samples (n, dim); row i from component labels[i] where labels[i] >= 0."""
        ...


def component_indices(n: int, labels: Tensor | None, n_components: int,
                      generator: torch.Generator | None = None) -> Tensor:
    """Each row's component: its label where the label is >= 0, else a uniform draw over all components."""
    # Always drawn, so the generator advances the same way whether or not labels are given.
    drawn = torch.randint(n_components, (n,), generator=generator, device=device_of(generator))
    if labels is None:
        return drawn
    labels = labels.detach().to(drawn.device, torch.int64).reshape(-1)
    if labels.numel() != n:
        raise ValueError(f"got {labels.numel()} labels for {n} samples")
    if bool((labels >= n_components).any()):
        raise ValueError(f"label {int(labels.max())} is out of range for {n_components} components")
    return torch.where(labels >= 0, labels, drawn)


def device_of(generator: torch.Generator | None) -> torch.device | None:
    """Where draws from `generator` land (None: torch's default, the CPU)."""
    return None if generator is None else generator.device


def one_hot(k: Tensor, n: int) -> Tensor:
    """Float one-hot rows of the indices k: F.one_hot(k, n).float(), but without checking k's range, which
    on a GPU would wait for the device (and so cannot be captured in a CUDA graph)."""
    return torch.zeros(len(k), n, device=k.device).scatter_(1, k[:, None], 1.0)


def _normal_log_prob(x: Tensor, std: float) -> Tensor:
    return -0.5 * (x / std) ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi)


class GaussianPrior:
    """Isotropic Gaussian N(mean, std² I); std defaults to the paper's 5."""

    n_components = 0

    def __init__(self, dim: int = 2, std: float = 5.0, mean: float = 0.0) -> None:
        if dim < 1 or std <= 0:
            raise ValueError("GaussianPrior needs dim >= 1 and std > 0")
        self.dim, self.std, self.mean = dim, float(std), float(mean)

    def sample(self, n: int, labels: Tensor | None = None, generator: torch.Generator | None = None
               ) -> Tensor:
        """n draws; labels are ignored (no components)."""
        return self.mean + self.std * torch.randn(n, self.dim, generator=generator, device=device_of(generator))

    def log_prob(self, z: Tensor) -> Tensor:
        """log p(z) per row."""
        return _normal_log_prob(z - self.mean, self.std).sum(-1)


class MixturePrior:
    """The paper's mixture of elongated Gaussians arranged on a circle.

    In 2-D, component k is a Gaussian with std `std_along` along the radial direction and `std_across`
    across it, centred `shift` from the origin at angle 2πk/K. In more dimensions every consecutive pair of
    axes (0,1), (2,3), ... holds the same 2-D pattern for the same component (as public reproductions do),
    and an odd last axis is N(0, std_across²).
    """

    def __init__(self, dim: int = 2, n_components: int = 10, shift: float = 1.4, std_along: float = 0.5,
                 std_across: float = 0.1) -> None:
        if dim < 2 or n_components < 1:
            raise ValueError("MixturePrior needs dim >= 2 and n_components >= 1")
        self.dim, self.n_components = dim, n_components
        self.shift, self.std_along, self.std_across = float(shift), float(std_along), float(std_across)
        self.angles = self._angle(torch.arange(n_components))

    def means(self) -> Tensor:
        """Component means (K, dim)."""
        pair = self.shift * torch.stack([self.angles.cos(), self.angles.sin()], -1)
        out = torch.zeros(self.n_components, self.dim)
        out[:, : 2 * (self.dim // 2)] = pair.repeat(1, self.dim // 2)
        return out

    def sample(self, n: int, labels: Tensor | None = None, generator: torch.Generator | None = None
               ) -> Tensor:
        """n draws; row i from component labels[i] where labels[i] >= 0, else from the whole mixture."""
        k = component_indices(n, labels, self.n_components, generator)
        pairs, on = self.dim // 2, device_of(generator)
        along = self.std_along * torch.randn(n, pairs, generator=generator, device=on) + self.shift
        across = self.std_across * torch.randn(n, pairs, generator=generator, device=on)
        angles = self._angle(k)  # self.angles[k], computed where k is
        cos, sin = angles.cos()[:, None], angles.sin()[:, None]
        rotated = torch.stack([along * cos - across * sin, along * sin + across * cos], -1)
        out = rotated.reshape(n, 2 * pairs)
        if self.dim % 2:
            out = torch.cat([out, self.std_across * torch.randn(n, 1, generator=generator, device=on)], 1)
        return out

    def _angle(self, k: Tensor) -> Tensor:
        """The direction of component k's axis."""
        return 2 * math.pi * k.float() / self.n_components

    def _frame(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Each code's offsets (N, K, pairs) along and across every component's axis, from its centre."""
        pairs = self.dim // 2
        xy = z[:, None, : 2 * pairs].reshape(len(z), 1, pairs, 2)
        cos = self.angles.to(z).cos()[None, :, None]
        sin = self.angles.to(z).sin()[None, :, None]
        return xy[..., 0] * cos + xy[..., 1] * sin - self.shift, -xy[..., 0] * sin + xy[..., 1] * cos

    def locate(self, z: Tensor, within_sigmas: float = 3.0) -> tuple[Tensor, Tensor]:
        """Each code's nearest component (by Mahalanobis distance) and whether it lies on it: inside the
        component's `within_sigmas` ellipse in every axis pair (the prior's own draws: 98.9% in 2-D)."""
        along, across = self._frame(z)
        squared = (along / self.std_along) ** 2 + (across / self.std_across) ** 2  # (N, K, pairs)
        component = squared.sum(-1).argmin(1)
        inside = (squared[torch.arange(len(z)), component] <= within_sigmas ** 2).all(-1)
        if self.dim % 2:
            inside &= (z[:, -1] / self.std_across).abs() <= within_sigmas
        return component, inside

    def log_prob(self, z: Tensor) -> Tensor:
        """log p(z) per row (used by the VAE's Monte Carlo KL)."""
        along, across = self._frame(z)
        per_k = (_normal_log_prob(along, self.std_along) + _normal_log_prob(across, self.std_across)).sum(-1)
        if self.dim % 2:
            per_k = per_k + _normal_log_prob(z[:, -1:], self.std_across)
        return torch.logsumexp(per_k, 1) - math.log(self.n_components)


class SwissRollPrior:
    """2-D swiss roll: u ~ U[0,1), radius = `radius`·√u, angle = 4π√u; class k owns u in [k/K, (k+1)/K)."""

    def __init__(self, dim: int = 2, n_components: int = 10, radius: float = 3.0) -> None:
        if dim != 2:
            raise ValueError("SwissRollPrior is 2-D only")
        self.dim, self.n_components, self.radius = 2, n_components, float(radius)

    def sample(self, n: int, labels: Tensor | None = None, generator: torch.Generator | None = None
               ) -> Tensor:
        """n draws; row i from segment labels[i] where labels[i] >= 0, else from the whole roll."""
        k = component_indices(n, labels, self.n_components, generator)
        root = ((k + torch.rand(n, generator=generator, device=device_of(generator))) / self.n_components).sqrt()
        return self._curve(root)

    def _curve(self, root: Tensor) -> Tensor:
        """Points of the roll at √u = root."""
        angle = 4 * math.pi * root
        return self.radius * root[:, None] * torch.stack([angle.cos(), angle.sin()], -1)

    def locate(self, z: Tensor, within: float = 0.1, resolution: int = 4000) -> tuple[Tensor, Tensor]:
        """Each code's segment (that of the nearest point of the roll) and whether it lies within
        `within`·radius of the roll (neighbouring turns lie radius/2 apart)."""
        u = (torch.arange(resolution, dtype=torch.float32) + 0.5) / resolution
        curve = self._curve(u.sqrt()).to(z)
        distance, index = torch.cdist(z[:, :2].float(), curve.float()).min(1)
        segment = (u[index.cpu()] * self.n_components).long().clamp(max=self.n_components - 1)
        return segment.to(z.device), distance <= within * self.radius


class CategoricalPrior:
    """One-hot vectors of a uniform categorical over `dim` classes (the semi-supervised y prior)."""

    def __init__(self, dim: int = 10) -> None:
        if dim < 1:
            raise ValueError("CategoricalPrior needs dim >= 1")
        self.dim = self.n_components = dim

    def sample(self, n: int, labels: Tensor | None = None, generator: torch.Generator | None = None
               ) -> Tensor:
        """n one-hot rows; row i is one-hot at labels[i] where labels[i] >= 0."""
        k = component_indices(n, labels, self.dim, generator)
        return one_hot(k, self.dim)


class UniformPrior:
    """Uniform on the box [low, high]^dim."""

    n_components = 0

    def __init__(self, dim: int = 2, low: float = -1.0, high: float = 1.0) -> None:
        if dim < 1 or high <= low:
            raise ValueError("UniformPrior needs dim >= 1 and high > low")
        self.dim, self.low, self.high = dim, float(low), float(high)

    def sample(self, n: int, labels: Tensor | None = None, generator: torch.Generator | None = None
               ) -> Tensor:
        """n draws; labels are ignored (no components)."""
        draws = torch.rand(n, self.dim, generator=generator, device=device_of(generator))
        return self.low + (self.high - self.low) * draws


PRIORS: dict[str, type] = {
    "gaussian": GaussianPrior,
    "mixture": MixturePrior,
    "swiss_roll": SwissRollPrior,
    "categorical": CategoricalPrior,
    "uniform": UniformPrior,
}


def build_prior(name: str, **params: object) -> Prior:
    """A prior from its registry name or import path "package.module:ClassName", with its parameters."""
    cls = resolve(name, PRIORS, "prior")
    try:
        prior = cls(**params)
    except TypeError as err:
        raise ValueError(f"bad parameters for prior {name!r}: {err}") from err
    if not isinstance(prior, Prior):
        raise ValueError(f"{name!r} does not implement the Prior protocol (dim, n_components, sample)")
    return prior
