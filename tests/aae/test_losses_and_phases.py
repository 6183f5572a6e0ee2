"""Losses have the recipe's reductions and targets; phases step the right parameters the right way."""

from __future__ import annotations

import math

import torch
from torch import nn

from aae.losses import (
    cluster_head_hinge,
    discriminator_loss,
    gaussian_kl,
    generator_loss,
    monte_carlo_kl,
    reconstruction_loss,
)
from aae.phases import Critic, discriminator_phase, generator_phase, optimizer_step, reconstruction_phase
from aae.priors import MixturePrior


def test_reconstruction_loss_sums_pixels_and_averages_the_batch() -> None:
    x = torch.rand(4, 10)
    logits = torch.randn(4, 10)
    p = torch.sigmoid(logits)
    manual = -(x * p.log() + (1 - x) * (1 - p).log()).sum() / 4
    assert torch.allclose(reconstruction_loss(logits, x), manual, atol=1e-5)
    assert torch.allclose(reconstruction_loss(logits, x, "mse"), ((p - x) ** 2).sum() / 4)


def test_discriminator_loss_calls_prior_samples_real_and_codes_fake() -> None:
    confident = torch.full((8,), 20.0)
    assert discriminator_loss(real_logits=confident, fake_logits=-confident) < 1e-6
    assert discriminator_loss(real_logits=-confident, fake_logits=confident) > 10
    assert math.isclose(discriminator_loss(torch.zeros(8), torch.zeros(8)).item(), math.log(2), rel_tol=1e-6)


def test_generator_loss_labels_codes_real() -> None:
    assert generator_loss(torch.full((8,), 20.0)) < 1e-6
    assert generator_loss(torch.full((8,), -20.0)) > 10


def test_discriminator_phase_learns_prior_high_codes_low_and_leaves_encoder_alone() -> None:
    disc, encoder = nn.Linear(1, 1), nn.Linear(1, 1)
    opt = torch.optim.SGD(disc.parameters(), lr=1.0)
    prior_samples, codes = torch.full((16, 1), 1.0), encoder(torch.full((16, 1), -1.0))
    for _ in range(100):
        discriminator_phase([Critic(disc, prior_samples, codes)], opt)
    assert disc(prior_samples).mean() > 1 and disc(codes).mean() < -1
    assert all(p.grad is None for p in encoder.parameters())  # codes are detached


def test_generator_phase_moves_codes_to_where_the_discriminator_sees_the_prior() -> None:
    disc = nn.Linear(1, 1)
    with torch.no_grad():
        disc.weight.fill_(1.0)  # says "prior" for large values
        disc.bias.zero_()
    encoder = nn.Linear(1, 1)
    opt = torch.optim.SGD(encoder.parameters(), lr=0.1)
    x = torch.ones(16, 1)
    before = encoder(x).mean().item()
    for _ in range(20):
        generator_phase([Critic(disc, None, encoder(x))], opt)
    assert encoder(x).mean().item() > before + 1
    assert disc.weight.item() == 1.0 and all(p.grad is None for p in disc.parameters())


def test_discriminator_input_noise_is_applied_only_when_asked() -> None:
    disc = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 1), nn.Flatten(0))
    opt = torch.optim.SGD(disc.parameters(), lr=0.0)
    real, fake = torch.randn(32, 2), torch.randn(32, 2)
    clean = [discriminator_phase([Critic(disc, real, fake)], opt)[0] for _ in range(2)]
    noisy = [discriminator_phase([Critic(disc, real, fake)], opt, noise_std=0.3,
                                 generator=torch.Generator().manual_seed(s))[0] for s in range(2)]
    assert clean[0] == clean[1] and noisy[0] != noisy[1] and noisy[0] != clean[0]


def test_optimizer_step_syncs_gradients_after_backward_and_before_step() -> None:
    layer = nn.Linear(3, 1)
    opt = torch.optim.SGD(layer.parameters(), lr=1.0)
    seen = []

    def sync(params: list[nn.Parameter]) -> None:
        seen.extend(params)
        for p in params:
            p.grad.zero_()  # a sync that zeroes gradients must leave the weights unchanged

    before = [p.detach().clone() for p in layer.parameters()]
    optimizer_step(layer(torch.ones(2, 3)).sum(), opt, sync)
    assert len(seen) == 2
    assert all(torch.equal(a, b) for a, b in zip(before, layer.parameters(), strict=True))


def test_reconstruction_phase_adds_the_penalty_but_reports_the_reconstruction() -> None:
    layer = nn.Linear(2, 2)
    opt = torch.optim.SGD(layer.parameters(), lr=0.0)
    x = torch.rand(4, 2)
    plain = reconstruction_phase(layer(x), x, opt)
    assert reconstruction_phase(layer(x), x, opt, penalty=torch.tensor(100.0)) == plain


def test_cluster_head_hinge_penalises_only_pairs_closer_than_eta() -> None:
    heads = torch.tensor([[0.0, 0.0], [0.3, 0.4], [10.0, 0.0]], requires_grad=True)
    loss = cluster_head_hinge(heads, eta=1.0)
    assert math.isclose(loss.item(), 0.5, rel_tol=1e-5)  # only the first pair, 0.5 apart
    loss.backward()
    assert heads.grad[2].abs().sum() == 0 and heads.grad[1] @ torch.tensor([0.3, 0.4]) < 0
    assert cluster_head_hinge(torch.tensor([[0.0, 0.0], [3.0, 0.0]]), eta=2.0) == 0


def test_gaussian_kl_matches_torch_distributions() -> None:
    mean, logvar = torch.randn(6, 3), torch.randn(6, 3)
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros(3), torch.full((3,), 5.0))
    expected = torch.distributions.kl_divergence(q, p).sum(1)
    assert torch.allclose(gaussian_kl(mean, logvar, 0.0, 5.0), expected, atol=1e-5)


def test_monte_carlo_kl_of_a_one_component_mixture_approaches_the_closed_form() -> None:
    prior = MixturePrior(dim=2, n_components=1, shift=1.4, std_along=0.5, std_across=0.1)
    mean, logvar = torch.tensor([[1.0, 0.2]]), torch.tensor([[-2.0, -5.0]])
    closed = gaussian_kl(mean, logvar, torch.tensor([1.4, 0.0]), torch.tensor([0.5, 0.1]))
    n = 200000
    code = mean + (0.5 * logvar).exp() * torch.randn(n, 2)
    estimate = monte_carlo_kl(code, mean.expand(n, 2), logvar.expand(n, 2), prior.log_prob).mean()
    assert abs(estimate.item() - closed.item()) < 0.02 * closed.item() + 0.01
