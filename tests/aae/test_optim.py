"""The paper's per-phase rates are the defaults, and the step decay really runs."""

from __future__ import annotations

import pytest
import torch

from aae.optim import DEFAULT_MOMENTUM, PHASES, OptimConfig, build_optimizer
from aae.variants import build_model


def test_defaults_are_the_papers_sgd_recipe() -> None:
    c = OptimConfig()
    assert (c.lr["reconstruction"], c.momentum["reconstruction"]) == (0.01, 0.9)
    assert (c.lr["discriminator"], c.momentum["discriminator"], c.lr["generator"], c.momentum["generator"]) == (
        0.1, 0.1, 0.1, 0.1)
    assert (c.lr["supervised"], c.momentum["supervised"]) == (0.1, 0.9)
    assert c.decay_epochs == (50, 1000) and c.decay_factor == 0.1


def test_every_phase_rate_is_divided_by_ten_after_epoch_50_and_1000() -> None:
    model = build_model("semi_supervised", {"input_dim": 8, "hidden": [8], "disc_hidden": [8]})
    model.configure_optimizers(OptimConfig())
    initial = {p: model.optimizers[p].param_groups[0]["lr"] for p in PHASES}
    for epoch in range(49):
        model.end_epoch(epoch)
    assert {p: model.optimizers[p].param_groups[0]["lr"] for p in PHASES} == initial
    model.end_epoch(49)  # the 50th epoch is done: epoch 51 trains at a tenth of the rate
    for p in PHASES:
        assert model.optimizers[p].param_groups[0]["lr"] == pytest.approx(initial[p] / 10)
    model.end_epoch(999)
    for p in PHASES:
        assert model.optimizers[p].param_groups[0]["lr"] == pytest.approx(initial[p] / 100)


def test_end_epoch_is_idempotent_for_the_same_epoch() -> None:
    model = build_model("unsupervised", {"input_dim": 8, "hidden": [8], "disc_hidden": [8]})
    model.configure_optimizers(OptimConfig(decay_epochs=(2,)))
    for _ in range(3):
        model.end_epoch(0)
    assert model.optimizers["reconstruction"].param_groups[0]["lr"] == pytest.approx(0.01)


def test_adam_option_uses_its_own_rates_and_betas() -> None:
    c = OptimConfig(kind="adam")
    opt, _ = build_optimizer([torch.nn.Parameter(torch.zeros(1))], c, "discriminator")
    assert isinstance(opt, torch.optim.Adam)
    assert opt.param_groups[0]["lr"] == 1e-4 and opt.param_groups[0]["betas"] == (0.5, 0.999)
    assert OptimConfig(kind="adam", lr={"reconstruction": 0.5}).lr["reconstruction"] == 0.5


def test_bad_optimiser_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="kind"):
        OptimConfig(kind="rmsprop")
    with pytest.raises(ValueError, match="positive"):
        OptimConfig(lr={"generator": 0.0})
    with pytest.raises(ValueError, match=r"lr names unknown phases \['gen'\]"):
        OptimConfig(lr={"gen": 0.1})
    with pytest.raises(ValueError, match=r"momentum names unknown phases \['decoder'\]"):
        OptimConfig(momentum={"decoder": 0.5})


def test_a_phase_left_out_or_none_takes_the_default_of_the_kind() -> None:
    c = OptimConfig(kind="adam", lr={"generator": 0.2, "supervised": None}, momentum={"discriminator": 0.5})
    assert c.lr == {"reconstruction": 3e-4, "discriminator": 1e-4, "generator": 0.2, "supervised": 3e-4}
    assert c.momentum == {**DEFAULT_MOMENTUM, "discriminator": 0.5}


def test_a_restored_state_takes_new_rates_with_the_decays_already_passed_and_keeps_its_momentum() -> None:
    def model():
        return build_model("semi_supervised", {"input_dim": 8, "hidden": [8], "disc_hidden": [8]})

    trained = model()
    trained.configure_optimizers(OptimConfig(decay_epochs=(2, 4)))
    sum(p.square().sum() for p in trained.phase_parameters()["reconstruction"]).backward()
    trained.optimizer("reconstruction").step()  # a momentum buffer to carry over
    for epoch in range(3):  # past the milestone at 2, not the one at 4
        trained.end_epoch(epoch)
    restored = model()
    changed = OptimConfig(lr={"reconstruction": 0.5}, momentum={"reconstruction": 0.5}, decay_epochs=(2, 4))
    restored.load_training_state(trained.training_state(), changed)
    group = restored.optimizers["reconstruction"].param_groups[0]
    assert group["lr"] == pytest.approx(0.05) and group["momentum"] == 0.5  # 0.5, decayed once
    assert restored.optimizers["generator"].param_groups[0]["lr"] == pytest.approx(0.01)  # the default 0.1, decayed
    buffers = [s["momentum_buffer"] for s in restored.optimizers["reconstruction"].state.values()]
    assert buffers and all(buffer is not None for buffer in buffers)
    restored.end_epoch(3)  # the milestone at 4 still applies
    assert restored.optimizers["reconstruction"].param_groups[0]["lr"] == pytest.approx(0.005)
    unchanged = model()
    unchanged.load_training_state(trained.training_state(), trained.optim_config)
    assert unchanged.optimizers["reconstruction"].param_groups[0]["lr"] == pytest.approx(0.001)  # the saved 0.01
