"""Each variant hands its discriminators prior samples as "real" and encoder codes as "fake"."""

from __future__ import annotations

import pytest
import torch

import aae.phases
from aae.batch import Batch
from aae.optim import OptimConfig
from aae.phases import Critic
from aae.variants import build_model


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Critic]]:
    """Record the critics every discriminator / generator phase receives, in every variant module."""
    seen: dict[str, list[Critic]] = {}
    for phase in ("discriminator_phase", "generator_phase"):
        real = getattr(aae.phases, phase)

        def record(critics, *args, _real=real, _phase=phase, **kwargs):
            seen[_phase] = list(critics)
            return _real(critics, *args, **kwargs)

        for module in ("single_code", "categorical"):
            monkeypatch.setattr(f"aae.variants.{module}.{phase}", record)
    return seen


def small(name: str, **params: object):
    model = build_model(name, {"input_dim": 12, "hidden": (16,), "disc_hidden": (16,), **params})
    # Encoder rates ~0 so the codes the phases saw can be recomputed after the step.
    model.configure_optimizers(OptimConfig(lr=dict.fromkeys(("reconstruction", "generator", "supervised"), 1e-12)))
    return model


def test_semi_supervised_discriminators_get_prior_real_and_codes_fake(spy) -> None:
    model = small("semi_supervised", z_dim=3, n_classes=4)
    x = torch.rand(500, 12)
    model.training_step(Batch(x, torch.full((500,), -1)))
    y_critic, z_critic = spy["discriminator_phase"]
    assert y_critic.net is model.disc_y and z_critic.net is model.disc_z
    assert ((y_critic.real == 0) | (y_critic.real == 1)).all() and (y_critic.real.sum(1) == 1).all()
    assert abs(z_critic.real.std().item() - 5.0) < 0.3  # N(0, 5² I) draws
    encoded = model.encoder(x)
    assert torch.allclose(y_critic.fake, encoded.logits.softmax(1), atol=1e-6)
    assert torch.allclose(z_critic.fake, encoded.code, atol=1e-6)
    gen_y, gen_z = spy["generator_phase"]
    assert gen_y.real is None and gen_y.fake.requires_grad and gen_z.fake.requires_grad


def test_unsupervised_discriminator_gets_prior_real_and_codes_fake(spy) -> None:
    model = small("unsupervised", z_dim=2, prior="uniform", prior_params={"low": 3.0, "high": 4.0})
    x = torch.rand(64, 12)
    model.training_step(Batch(x))
    (critic,) = spy["discriminator_phase"]
    assert (critic.real >= 3).all() and (critic.real <= 4).all()
    assert torch.allclose(critic.fake, model.encoder(x).code, atol=1e-6)


def test_label_regularised_real_samples_come_from_each_labels_component(spy) -> None:
    model = small("label_regularised", z_dim=2, n_classes=10, prior="swiss_roll")
    y = torch.tensor([0, 9, -1, 4] * 50)
    model.training_step(Batch(torch.rand(200, 12), y))
    (critic,) = spy["discriminator_phase"]
    u = (critic.real.norm(dim=1) / 3.0) ** 2
    labelled = y >= 0
    assert (torch.floor(u[labelled] * 10).long() == y[labelled]).all()
    expected = torch.where(y >= 0, y, 10)
    assert torch.equal(critic.condition.argmax(1), expected) and critic.condition.shape == (200, 11)
    (gen,) = spy["generator_phase"]
    assert torch.equal(gen.condition, critic.condition)
