"""Each prior's samples have the right moments, support and label-to-component mapping."""

from __future__ import annotations

import math

import pytest
import torch

from aae.priors import (
    PRIORS,
    CategoricalPrior,
    GaussianPrior,
    MixturePrior,
    Prior,
    SwissRollPrior,
    UniformPrior,
    build_prior,
)


def test_gaussian_prior_has_the_requested_mean_and_std() -> None:
    z = GaussianPrior(dim=3, std=5.0).sample(20000)
    assert z.shape == (20000, 3)
    assert z.mean(0).abs().max() < 0.15
    assert torch.allclose(z.std(0), torch.full((3,), 5.0), atol=0.1)
    assert abs(torch.corrcoef(z.T)[0, 1]) < 0.03


def test_mixture_components_sit_at_their_angles_and_follow_labels() -> None:
    prior = MixturePrior(dim=2, n_components=10, shift=1.4, std_along=0.5, std_across=0.1)
    labels = torch.arange(10).repeat_interleave(2000)
    z = prior.sample(len(labels), labels)
    for k in range(10):
        zk = z[labels == k]
        angle = 2 * math.pi * k / 10
        radial = torch.tensor([math.cos(angle), math.sin(angle)])
        tangent = torch.tensor([-math.sin(angle), math.cos(angle)])
        assert torch.allclose(zk.mean(0), 1.4 * radial, atol=0.05)
        assert abs((zk @ radial).std() - 0.5) < 0.03
        assert abs((zk @ tangent).std() - 0.1) < 0.01
    assert torch.allclose(prior.means()[3], 1.4 * torch.tensor([math.cos(0.6 * math.pi), math.sin(0.6 * math.pi)]))


def test_mixture_unlabelled_rows_cover_every_component() -> None:
    prior = MixturePrior(n_components=10)
    z = prior.sample(5000, torch.full((5000,), -1))
    nearest = torch.cdist(z, prior.means()).argmin(1)
    counts = torch.bincount(nearest, minlength=10).float() / 5000
    assert counts.min() > 0.07 and counts.max() < 0.13


def test_mixture_log_prob_integrates_to_one_in_2d() -> None:
    prior = MixturePrior(n_components=5, std_across=0.1)
    grid = torch.linspace(-4, 4, 801)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    density = prior.log_prob(torch.stack([xx.flatten(), yy.flatten()], 1)).exp()
    assert abs(density.sum().item() * (8 / 800) ** 2 - 1.0) < 0.01


def test_mixture_in_four_dims_repeats_the_pattern_per_axis_pair() -> None:
    prior = MixturePrior(dim=4, n_components=4)
    z = prior.sample(4000, torch.full((4000,), 1))
    assert torch.allclose(z.mean(0), torch.tensor([0.0, 1.4, 0.0, 1.4]), atol=0.05)


def test_swiss_roll_class_k_lies_on_segment_k() -> None:
    prior = SwissRollPrior(n_components=10, radius=3.0)
    labels = torch.arange(10).repeat_interleave(500)
    z = prior.sample(len(labels), labels)
    u = (z.norm(dim=1) / 3.0) ** 2
    assert ((u >= labels / 10 - 1e-5) & (u < (labels + 1) / 10 + 1e-5)).all()
    angle = 4 * math.pi * u.sqrt()
    on_curve = 3.0 * u.sqrt()[:, None] * torch.stack([angle.cos(), angle.sin()], 1)
    assert torch.allclose(z, on_curve, atol=1e-4)
    whole = (prior.sample(10000).norm(dim=1) / 3.0) ** 2
    assert abs(whole.mean().item() - 0.5) < 0.02 and whole.min() >= 0 and whole.max() < 1


def test_categorical_prior_is_one_hot_uniform_and_honours_labels() -> None:
    prior = CategoricalPrior(dim=5)
    y = prior.sample(10000)
    assert ((y == 0) | (y == 1)).all() and (y.sum(1) == 1).all()
    assert (y.mean(0) - 0.2).abs().max() < 0.02
    labels = torch.tensor([3, -1, 0])
    assert prior.sample(3, labels)[[0, 2]].argmax(1).tolist() == [3, 0]


def test_uniform_prior_fills_its_box() -> None:
    z = UniformPrior(dim=2, low=-2.0, high=1.0).sample(10000)
    assert z.min() >= -2 and z.max() <= 1
    assert torch.allclose(z.mean(0), torch.full((2,), -0.5), atol=0.05)


def test_out_of_range_label_is_rejected() -> None:
    with pytest.raises(ValueError, match="out of range"):
        MixturePrior(n_components=3).sample(2, torch.tensor([0, 3]))


def test_sampling_is_reproducible_with_a_generator() -> None:
    for name in PRIORS:
        prior = build_prior(name, dim=2)
        a = prior.sample(5, generator=torch.Generator().manual_seed(1))
        b = prior.sample(5, generator=torch.Generator().manual_seed(1))
        assert torch.equal(a, b), name
        assert isinstance(prior, Prior)


def test_build_prior_takes_registry_names_and_import_paths(tmp_path, monkeypatch) -> None:
    assert isinstance(build_prior("gaussian", dim=2, std=1.0), GaussianPrior)
    assert isinstance(build_prior("aae.priors:UniformPrior", dim=3), UniformPrior)
    (tmp_path / "my_priors.py").write_text(
        "import torch\n"
        "class Ring:\n"
        "    n_components = 0\n"
        "    def __init__(self, dim=2):\n"
        "        self.dim = dim\n"
        "    def sample(self, n, labels=None, generator=None):\n"
        "        a = 6.2832 * torch.rand(n, generator=generator)\n"
        "        return torch.stack([a.cos(), a.sin()], 1)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    ring = build_prior("my_priors:Ring", dim=2)
    assert torch.allclose(ring.sample(100).norm(dim=1), torch.ones(100), atol=1e-5)


def test_build_prior_rejects_unknown_names_and_bad_params() -> None:
    with pytest.raises(ValueError, match="unknown prior"):
        build_prior("gausian")
    with pytest.raises(ValueError, match="bad parameters"):
        build_prior("gaussian", sigma=1.0)
    with pytest.raises(ValueError, match="cannot import"):
        build_prior("no_such_module_xyz:Prior")


@pytest.mark.parametrize("prior", [MixturePrior(dim=2), MixturePrior(dim=5), SwissRollPrior()])
def test_locate_puts_the_priors_own_draws_on_their_component_and_shifted_codes_off_it(prior) -> None:
    labels = torch.arange(10).repeat(300)
    z = prior.sample(len(labels), labels, generator=torch.Generator().manual_seed(0))
    component, on_prior = prior.locate(z)
    assert on_prior.float().mean() > 0.97  # 3σ holds 98.9% of a 2-D Gaussian; the roll has no noise
    assert (component == labels).float().mean() > 0.95
    _, off = prior.locate(z * 1.5 + 0.5)  # stretched and moved: most codes leave the prior
    assert off.float().mean() < 0.5
