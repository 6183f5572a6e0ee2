"""Every variant honours the model interface: config checks, loss keys, any batch size, exact resume."""

from __future__ import annotations

import pytest
import torch

from aae.batch import Batch
from aae.optim import OptimConfig
from aae.variants import VARIANTS, build_model
from aae.variants.base import AAEModel

TINY = {"input_dim": 12, "hidden": (16,), "init_std": 0.1}
LOSS_KEYS = {
    "unsupervised": {"recon_loss", "disc_loss", "gen_loss"},
    "vae": {"recon_loss", "kl_loss"},
    "label_regularised": {"recon_loss", "disc_loss", "gen_loss"},
    "supervised": {"recon_loss", "disc_loss", "gen_loss"},
    "semi_supervised": {"recon_loss", "disc_y_loss", "disc_z_loss", "gen_y_loss", "gen_z_loss",
                        "supervised_loss"},
    "clustering": {"recon_loss", "disc_y_loss", "disc_z_loss", "gen_y_loss", "gen_z_loss"},
    "dim_reduction": {"recon_loss", "hinge_loss", "disc_y_loss", "disc_z_loss", "gen_y_loss", "gen_z_loss",
                      "supervised_loss"},
}


def tiny(name: str, **params: object) -> AAEModel:
    extra = {} if name == "vae" else {"disc_hidden": (16,)}
    model = build_model(name, {**TINY, **extra, **params})
    model.configure_optimizers(OptimConfig(decay_epochs=(1,)))
    return model


def batch_of(n: int, seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(10, (n,), generator=g)
    return Batch(torch.rand(n, 12, generator=g), y, torch.rand(3, 12, generator=g),
                 torch.randint(10, (3,), generator=g))


def test_registry_names_the_seven_paper_models() -> None:
    assert set(VARIANTS) == set(LOSS_KEYS)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_training_step_returns_detached_scalar_losses_for_any_batch_size(name: str) -> None:
    model = tiny(name)
    for n in (1, 7, 100):
        losses = model.training_step(batch_of(n, n))
        assert set(losses) == LOSS_KEYS[name]
        assert all(v.shape == () and not v.requires_grad and torch.isfinite(v) for v in losses.values())
    x = torch.rand(5, 12)
    assert model.sample(4).shape == (4, 12)
    if name == "supervised":  # its decoder reads [one-hot y, z]
        assert model.decode_with_labels(model.encode(x), torch.arange(5)).shape == (5, 12)
    else:
        assert model.decode(model.encode(x)).shape == (5, 12)
    assert model.label_needs in ("none", "some", "all")


def as_floats(losses: dict[str, torch.Tensor]) -> dict[str, float]:
    return {key: float(loss) for key, loss in losses.items()}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_resumed_training_repeats_uninterrupted_training_exactly(name: str) -> None:
    model = tiny(name)
    for step in range(3):
        model.training_step(batch_of(8, step))
    model.end_epoch(0)  # decays every rate, so the scheduler state matters too
    state = model.training_state()
    uninterrupted = [as_floats(model.training_step(batch_of(8, 10 + step))) for step in range(3)]

    resumed = tiny(name)  # different initial weights and RNG
    resumed.load_training_state(state)
    assert [as_floats(resumed.training_step(batch_of(8, 10 + step))) for step in range(3)] == uninterrupted



def hyperparameters(model: AAEModel) -> dict[str, tuple[float, float, float | None]]:
    """Each phase optimiser's (lr, momentum, clip norm) as the next step would use them."""
    return {phase: (opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"], opt.clip_grad_norm)
            for phase, opt in model.optimizers.items()}


def test_a_training_state_survives_torch_save_and_a_weights_only_load(tmp_path) -> None:
    model = tiny("semi_supervised")
    model.configure_optimizers(OptimConfig(lr={"reconstruction": 0.003}, momentum={"generator": 0.5},
                                           decay_epochs=(2,), clip_grad_norm={"generator": 5.0}))
    model.end_epoch(0)
    torch.save(model.training_state(), tmp_path / "state.pt")
    resumed = tiny("semi_supervised")
    resumed.load_training_state(torch.load(tmp_path / "state.pt", weights_only=True))
    assert resumed.optim_config == model.optim_config
    assert hyperparameters(resumed) == hyperparameters(model)
    assert hyperparameters(model)["reconstruction"] == (0.003, 0.9, None)
    assert hyperparameters(model)["generator"] == (0.1, 0.5, 5.0)


def test_grad_sync_is_called_once_per_phase_with_that_phases_parameters() -> None:
    model = tiny("semi_supervised")
    calls: list[int] = []
    model.grad_sync = lambda params: calls.append(len(params))
    model.training_step(batch_of(8, 0))
    assert len(calls) == 4  # reconstruction, discriminators, generator, supervised
    assert calls[1] == len(list(model.disc_y.parameters())) + len(list(model.disc_z.parameters()))


def test_build_model_rejects_an_unknown_key_naming_it_and_the_allowed_keys() -> None:
    with pytest.raises(ValueError, match=r"unknown key 'zdim'.*allowed keys:.*z_dim"):
        build_model("semi_supervised", {"zdim": 10})
    with pytest.raises(ValueError, match="unknown variant"):
        build_model("semisupervised", {})


def test_configs_are_checked_on_construction() -> None:
    with pytest.raises(ValueError, match="encoder"):
        build_model("unsupervised", {"encoder": "stochastic"})
    with pytest.raises(ValueError, match="components"):
        build_model("label_regularised", {"n_classes": 5, "prior": "mixture"})
    with pytest.raises(ValueError, match="gaussian"):
        build_model("vae", {"encoder": "deterministic"})


def test_semi_supervised_defaults_are_the_measured_recipe() -> None:
    model = build_model("semi_supervised", {})
    c = model.config
    assert (c.input_dim, c.hidden, c.disc_hidden, c.z_dim, c.n_classes) == (784, (1000, 1000), (1000, 1000), 10, 10)
    assert (c.encoder, c.init_std, c.recon_loss, c.disc_noise_std, c.z_prior_std) == (
        "deterministic", 0.01, "bce", 0.0, 5.0)
    first = model.encoder.trunk[1][0]
    assert abs(first.weight.std().item() - 0.01) < 1e-3 and first.bias.abs().sum() == 0
    assert model.decoder.net[0].in_features == 20  # [softmax(y), z]
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.mark.parametrize("kind", ["gaussian", "universal"])
def test_stochastic_encoders_give_varying_codes_in_training(kind: str) -> None:
    model = tiny("unsupervised", encoder=kind)
    x = torch.rand(4, 12)
    assert not torch.equal(model.encoder(x).code, model.encoder(x).code)


def test_conv_networks_take_3x32x32_images() -> None:
    model = build_model("unsupervised", {"input_dim": 3072, "network": "conv", "hidden": (32,),
                                         "disc_hidden": (16,)})
    model.configure_optimizers(OptimConfig())
    x = torch.rand(2, 3, 32, 32)
    losses = model.training_step(Batch(x))
    assert losses["recon_loss"] > 0 and model.sample(3).shape == (3, 3, 32, 32)



def test_y_scale_sets_the_labels_magnitude_at_the_decoder_input() -> None:
    plain, scaled = tiny("supervised"), tiny("supervised", y_scale=10.0)
    z, y = torch.zeros(4, plain.config.z_dim), torch.arange(4)
    assert torch.equal(scaled.decoder_input(z, y), torch.cat([10 * plain.decoder_input(z, y)[:, :10], z], 1))
    assert all(torch.isfinite(v) for v in scaled.training_step(batch_of(8, 0)).values())
    with pytest.raises(ValueError, match="y_scale must be positive"):
        tiny("supervised", y_scale=0.0)


def test_categorical_y_scale_scales_y_where_the_decoder_reads_it() -> None:
    plain, scaled = tiny("clustering", n_clusters=4), tiny("clustering", n_clusters=4, y_scale=2.0)
    scaled.load_state_dict(plain.state_dict())
    y, z = torch.eye(4), torch.randn(4, plain.config.z_dim)
    assert torch.equal(scaled.representation(y, z), torch.cat([2 * y, z], 1))
    # The cluster heads go through the same scaled input as training does.
    assert torch.equal(scaled.decoded_heads(), plain.decode(torch.cat([2 * y, torch.zeros_like(z)], 1)))
    assert not torch.equal(scaled.decoded_heads(), plain.decoded_heads())
    assert all(torch.isfinite(v) for v in scaled.training_step(batch_of(8, 0)).values())
    with pytest.raises(ValueError, match="y_scale must be positive"):
        tiny("clustering", y_scale=0.0)
    with pytest.raises(ValueError, match="does not apply to dim_reduction"):
        tiny("dim_reduction", y_scale=2.0)


def test_style_drop_decodes_a_share_of_the_reconstruction_batch_from_y_alone() -> None:
    for style_drop in (0.0, 0.25):
        model = tiny("clustering", n_clusters=4, style_drop=style_drop)
        seen = []  # what the decoder reads in the one reconstruction step
        model.decoder.register_forward_pre_hook(lambda _, args, seen=seen: seen.append(args[0].detach()))
        model.reconstruction_step(torch.rand(2000, 12))
        (decoded,) = seen
        y, z = decoded[:, :4], decoded[:, 4:]
        assert torch.allclose(y.sum(1), torch.ones(2000))  # y itself always reaches the decoder
        assert abs((z == 0).all(1).float().mean().item() - style_drop) < 0.04
    with pytest.raises(ValueError, match=r"style_drop must be in \[0, 1\)"):
        tiny("clustering", style_drop=1.0)


def test_label_regularised_y_scale_sets_the_conditions_magnitude() -> None:
    plain, scaled = tiny("label_regularised"), tiny("label_regularised", y_scale=5.0)
    y = torch.tensor([0, 3, -1])
    assert torch.equal(scaled.critic_condition(y), 5 * plain.critic_condition(y))
    assert plain.critic_condition(y)[2, -1] == 1  # the "unlabelled" entry
    with pytest.raises(ValueError, match="y_scale must be positive"):
        tiny("label_regularised", y_scale=-1.0)
