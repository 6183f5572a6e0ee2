"""Collapse diagnostics, gradient clipping and the dimensionality-reduction hinge at coinciding heads."""

from __future__ import annotations

import math

import pytest
import torch

from aae.losses import cluster_head_hinge
from aae.metrics import category_usage, degeneracy_signs, spread_ratio
from aae.optim import OptimConfig, build_optimizer
from aae.phases import optimizer_step


def test_category_usage_counts_categories_holding_half_a_percent() -> None:
    uniform = torch.eye(16).repeat(50, 1)  # 800 rows, 50 per category
    assert category_usage(uniform) == {"clusters_used": 16, "y_entropy": pytest.approx(math.log(16))}
    collapsed = torch.zeros(1000, 16)
    collapsed[:, 3] = 1
    collapsed[:4, 5] = 2  # 4 rows (0.4%) elsewhere: too few to count as used
    usage = category_usage(collapsed)
    assert usage["clusters_used"] == 1 and usage["y_entropy"] < 0.03


def test_spread_ratio_is_one_for_codes_drawn_from_the_prior() -> None:
    codes = 5.0 * torch.randn(20_000, 10, generator=torch.Generator().manual_seed(0))
    assert spread_ratio(codes, 5.0) == pytest.approx(1.0, abs=0.02)
    assert spread_ratio(codes / 10, 5.0) == pytest.approx(0.1, abs=0.01)


@pytest.mark.parametrize(
    ("used", "categories", "ratio", "expected"),
    [
        (16, 16, 1.0, []),
        (12, 16, 1.2, []),  # exactly 3/4 used is not degenerate
        (8, 16, 1.0, ["only 8 of 16 categories used"]),
        (None, None, 4.5, ["style codes spread 4.5x their prior's std"]),
        (None, None, 0.2, ["style codes spread 0.2x their prior's std"]),
    ],
)
def test_degeneracy_signs(used, categories, ratio, expected) -> None:
    assert degeneracy_signs(used, categories, ratio) == expected


def test_a_clipped_phase_never_steps_further_than_lr_times_the_norm() -> None:
    weight = torch.nn.Parameter(torch.zeros(100))
    config = OptimConfig(lr={"reconstruction": 0.1}, momentum={"reconstruction": 0.0},
                         clip_grad_norm={"reconstruction": 1.0})
    optimizer, _ = build_optimizer([weight], config, "reconstruction")
    optimizer_step((1e6 * weight.sum() + 1e6), optimizer)  # gradient norm 1e7
    assert weight.detach().norm().item() == pytest.approx(0.1, rel=1e-4)
    unclipped, _ = build_optimizer([weight], OptimConfig(lr={"reconstruction": 0.1}, momentum={"reconstruction": 0.0}),
                                   "reconstruction")
    optimizer_step(1e6 * weight.sum(), unclipped)
    assert weight.detach().norm().item() > 1e5


def test_clip_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="positive norms"):
        OptimConfig(clip_grad_norm={"generator": -1.0})
    with pytest.raises(ValueError, match="phases"):
        OptimConfig(clip_grad_norm={"decoder": 1.0})


def test_the_hinge_and_its_gradient_are_finite_when_two_heads_coincide() -> None:
    heads = torch.nn.Parameter(torch.tensor([[0.5, 0.5], [0.5, 0.5], [2.0, 0.0]]))
    loss = cluster_head_hinge(heads, eta=1.0)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert torch.isfinite(heads.grad).all()


def test_he_init_scales_each_discriminator_layer_by_its_fan_in_and_normal_keeps_the_papers() -> None:
    from aae.variants import build_model

    he = build_model("unsupervised", {"input_dim": 784, "z_dim": 2, "disc_init": "he"}).discriminator
    first, second = [layer.weight for layer in he.modules() if isinstance(layer, torch.nn.Linear)][:2]
    assert first.std().item() == pytest.approx(1.0, rel=0.1)  # sqrt(2 / fan-in 2)
    assert second.std().item() == pytest.approx(math.sqrt(2 / 1000), rel=0.1)
    paper = build_model("unsupervised", {"input_dim": 784, "z_dim": 2}).discriminator
    assert all(layer.weight.std().item() == pytest.approx(0.01, rel=0.1)
               for layer in paper.modules() if isinstance(layer, torch.nn.Linear))
    with pytest.raises(ValueError, match="disc_init must be one of"):
        build_model("unsupervised", {"input_dim": 784, "disc_init": "xavier"})
