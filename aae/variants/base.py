"""AAEModel, the interface every variant implements, and the config fields the variants share."""

from __future__ import annotations

import bisect
import copy
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from aae.batch import Batch
from aae.losses import RECON_LOSSES
from aae.networks import DISC_INITS, ENCODER_KINDS, NETWORKS, EncoderOutput
from aae.optim import OptimConfig, build_optimizer
from aae.phases import GradSync
from aae.priors import Prior


@dataclass
class NetworkConfig:
    """Network fields every variant has; defaults are the paper's (2x1000 ReLU, N(0, 0.01), summed BCE)."""

    input_dim: int = 784
    hidden: tuple[int, ...] = (1000, 1000)
    network: str = "mlp"  # "mlp", or "conv" for 3x32x32 inputs (input_dim 3072)
    encoder: str = "deterministic"  # "deterministic" | "gaussian" | "universal"
    init_std: float = 0.01
    recon_loss: str = "bce"  # "bce" | "mse"

    # What each key means, for docs/configuration.md (a subclass documents the keys it adds).
    FIELD_DOCS: ClassVar[dict[str, str]] = {
        "input_dim": "values per image (784: 28x28 grey; 3072: 3x32x32 colour); the pipeline sets it from the data",
        "hidden": "the encoder's and decoder's hidden layer widths",
        "network": "`mlp`, or `conv` for 3x32x32 images (three stride-2 convolutions, then one hidden layer)",
        "encoder": "`deterministic`, `gaussian` (a posterior mean and variance) or `universal` (noise as an input), "
                   "the paper's three kinds",
        "init_std": "weights start as N(0, init_std²)",
        "recon_loss": "`bce` (summed over pixels) or `mse`",
    }

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)
        _check(self.network in NETWORKS, f"network must be one of {NETWORKS}, got {self.network!r}")
        _check(self.encoder in ENCODER_KINDS, f"encoder must be one of {ENCODER_KINDS}, got {self.encoder!r}")
        _check(self.recon_loss in RECON_LOSSES, f"recon_loss must be one of {RECON_LOSSES}")
        _check(self.input_dim > 0 and self.init_std > 0, "input_dim and init_std must be positive")
        _check(self.network != "conv" or self.input_dim == 3 * 32 * 32, "network='conv' needs input_dim 3072")


@dataclass
class AdversarialConfig(NetworkConfig):
    """Adds the discriminators' fields."""

    disc_hidden: tuple[int, ...] = (1000, 1000)
    disc_noise_std: float = 0.0  # Gaussian noise on discriminator inputs (0.3 stabilised reproductions)
    disc_init: str = "normal"  # "normal": N(0, init_std), the paper's; "he": scaled by fan-in (aae.networks)

    FIELD_DOCS: ClassVar[dict[str, str]] = {
        "disc_hidden": "the discriminators' hidden layer widths",
        "disc_noise_std": "Gaussian noise of this std added to the discriminators' inputs",
        "disc_init": "`normal`: the paper's N(0, init_std²); `he`: scaled by each layer's fan-in",
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        self.disc_hidden = tuple(int(h) for h in self.disc_hidden)
        _check(self.disc_noise_std >= 0, "disc_noise_std must be >= 0")
        _check(self.disc_init in DISC_INITS, f"disc_init must be one of {DISC_INITS}, not {self.disc_init!r}")


@dataclass
class CodeConfig:
    """One code z: its size and its prior (a registry name or "package.module:Class", built with dim=z_dim).

    A mixin: variant configs inherit it beside NetworkConfig or AdversarialConfig.
    """

    z_dim: int = 2
    prior: str = "gaussian"
    prior_params: dict[str, Any] = field(default_factory=dict)

    FIELD_DOCS: ClassVar[dict[str, str]] = {
        "z_dim": "the size of the code z",
        "prior": "`gaussian`, `mixture`, `swiss_roll`, `uniform`, or an import path `package.module:Class`",
        "prior_params": "the prior's own parameters (e.g. `{std: 5}`, `{n_components: 10}`)",
    }


@dataclass
class Readout:
    """What a trained model makes of a batch of images, from one encoder pass and at most one decoder pass."""

    code: Tensor  # what the decoder reads (encode)
    embedding: Tensor  # the representation to plot or compare: the style code, or the n-D map (dim reduction)
    probabilities: Tensor | None = None  # q(y|x), for models with a y head
    reconstruction: Tensor | None = None  # pixel probabilities; None unless asked for (and, for a decoder
    # that reads labels, given them)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def config_keys(config_class: type) -> list[str]:
    """The keys a variant's config accepts."""
    return [f.name for f in fields(config_class) if f.init]


class AAEModel(nn.Module):
    """Base of every variant: owns its networks, one optimiser + scheduler per phase, and a noise RNG.

    Subclasses set `config_class`, `label_needs` and `y_head`, build their networks in __init__, and implement
    phase_parameters, training_step and sample (and encode, when the decoder reads more than the encoder's
    code). Most variants start from SingleCodeAAE or CategoricalAAE, which do all of this.

    `label_needs` and `y_head` are class attributes where the class fixes them, so that what the model is can be
    read without building one (pipeline.plans does); a variant whose config decides them overrides them with
    properties (DimReductionAAE).
    """

    config_class: ClassVar[type]
    label_needs: str = "none"  # what the data loader must supply: "none" | "some" | "all"
    # What classify() predicts: "classes" (trained on labels), "clusters" (unsupervised), or None (no classify).
    y_head: str | None = None

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        self.grad_sync: GradSync | None = None
        self.optim_config: OptimConfig | None = None
        self.optimizers: dict[str, Optimizer] = {}
        self.schedulers: dict[str, LRScheduler] = {}
        # Prior draws and encoder noise come from the model's own RNG so a resumed run repeats them exactly;
        # seeded from the global RNG so the caller's torch.manual_seed still decides everything.
        self._generator_seed = int(torch.randint(2**62, ()).item())
        self._generator = torch.Generator().manual_seed(self._generator_seed)

    # -- what subclasses provide -------------------------------------------------------------------
    def phase_parameters(self) -> dict[str, list[nn.Parameter]]:
        """Parameters each phase's optimiser updates (keys from aae.optim.PHASES)."""
        raise NotImplementedError

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        """Run every phase of the variant on one batch; returns each loss as a detached 0-dim tensor on the
        model's device (float() reads one; the training loop sums them there, see aae.phases)."""
        raise NotImplementedError

    def encode(self, x: Tensor) -> Tensor:
        """The code the decoder reads (posterior mean for a Gaussian encoder)."""
        return self.infer(x).code

    def decode(self, code: Tensor) -> Tensor:
        """Pixel probabilities for codes."""
        with torch.no_grad():
            return torch.sigmoid(self.decoder(code))

    def sample(self, n: int, labels: Tensor | None = None) -> Tensor:
        """n images decoded from prior samples; `labels` (n class indices) picks what each shows, on models that
        can be told (sample_labels)."""
        raise NotImplementedError

    @property
    def sample_labels(self) -> int | None:
        """How many labels sample() can be given (classes, clusters, prior components); None: it takes none."""
        return None

    def _no_labels_to_sample(self, labels: Tensor | None) -> None:
        if labels is not None:
            raise ValueError(f"{type(self).__name__} samples from its prior alone: it cannot be given labels")

    def classify(self, x: Tensor) -> Tensor:
        """Class probabilities q(y|x); only variants with a categorical head have one."""
        raise NotImplementedError(f"{type(self).__name__} has no categorical head")

    def category_log_odds(self, x: Tensor) -> Tensor:
        """log(q / (1 - q)) of each category's q(y|x), from the logits: it orders confident examples where q,
        rounded to 1.0 in float32, ties them (aae.metrics.category_log_odds)."""
        raise NotImplementedError(f"{type(self).__name__} has no categorical head")

    def style(self, x: Tensor) -> tuple[Tensor, float] | None:
        """The style codes of x and the std of their Gaussian prior (for the spread diagnostic); None for
        models whose code has no Gaussian prior."""
        return None

    def style_codes(self, x: Tensor, chunk: int = 1000) -> tuple[Tensor, float] | None:
        """style() over x a chunk at a time: the style codes (on the CPU) and their Gaussian prior's std, or None
        for a model without a Gaussian style prior."""
        styles = [self.style(part) for part in x.split(chunk)]
        if styles[0] is None:
            return None
        return torch.cat([codes.cpu() for codes, _ in styles]), styles[0][1]

    def reconstruction(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Pixel probabilities of x passed through the autoencoder (labels only for label-fed decoders)."""
        return self.decode(self.encode(x))

    @torch.no_grad()
    def read(self, x: Tensor, labels: Tensor | None = None, reconstruct: bool = False) -> Readout:
        """Everything the model makes of x (see Readout); the families override it to encode once."""
        code = self.encode(x)
        probabilities = self.classify(x) if self.y_head is not None else None
        return Readout(code, code, probabilities, self.reconstruction(x, labels) if reconstruct else None)

    @property
    def generator(self) -> torch.Generator:
        """The training RNG (prior draws, encoder and discriminator noise), on the parameters' device: on a GPU
        the draws then stay on the GPU, and a CUDA graph can capture them. Moving the model starts it afresh
        from the same seed (the training loop reseeds it every epoch anyway)."""
        device = self.device
        if self._generator.device != device:
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(self._generator_seed)
        return self._generator

    # -- optimisation ------------------------------------------------------------------------------
    def configure_optimizers(self, config: OptimConfig | None = None) -> None:
        """Build one optimiser and one step-decay schedule per phase."""
        self.optim_config = config or OptimConfig()
        built = {phase: build_optimizer(list(params), self.optim_config, phase)
                 for phase, params in self.phase_parameters().items()}
        self.optimizers = {phase: opt for phase, (opt, _) in built.items()}
        self.schedulers = {phase: sched for phase, (_, sched) in built.items()}

    def optimizer(self, phase: str) -> Optimizer:
        """The optimiser of `phase` (configure_optimizers must have run)."""
        if phase not in self.optimizers:
            raise RuntimeError("call model.configure_optimizers(OptimConfig()) before training")
        return self.optimizers[phase]

    def end_epoch(self, epoch: int) -> None:
        """Mark epoch `epoch` (0-based) finished: schedules then reflect epoch + 1 completed epochs."""
        with warnings.catch_warnings():
            # A phase that never stepped this epoch (no labelled batch) still follows the schedule.
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            for scheduler in self.schedulers.values():
                while scheduler.last_epoch < epoch + 1:
                    scheduler.step()

    # -- checkpointing -----------------------------------------------------------------------------
    def training_state(self) -> dict[str, Any]:
        """A deep copy of everything training depends on: weights, optimisers, schedules, noise RNG."""
        return copy.deepcopy({
            "model": self.state_dict(),
            "optim_config": None if self.optim_config is None else asdict(self.optim_config),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "generator": self.generator.get_state(),
        })

    def load_training_state(self, state: dict[str, Any], optim: OptimConfig | None = None) -> None:
        """Restore a training_state(): optimisers are rebuilt from the saved OptimConfig, their state loaded, and
        then, when `optim` differs from the saved one (a resume that changes rates, momenta, clipping or the
        decay), its settings take over from the epoch reached; the momentum buffers carry over."""
        self.load_state_dict(state["model"])
        if state["optim_config"] is not None:
            saved = OptimConfig(**state["optim_config"])
            self.configure_optimizers(saved)
            for phase, opt_state in state["optimizers"].items():
                self.optimizers[phase].load_state_dict(opt_state)
            for phase, sched_state in state["schedulers"].items():
                self.schedulers[phase].load_state_dict(sched_state)
            if optim is not None and optim != saved:
                self._apply_optim_config(optim)
        if state["generator"].numel() == self.generator.get_state().numel():
            self.generator.set_state(state["generator"])
        # else the state was saved on another kind of device; the training loop reseeds the generator at the
        # start of every epoch, and checkpoints are taken between epochs, so nothing is lost.

    def _apply_optim_config(self, optim: OptimConfig) -> None:
        """Give the restored optimisers and schedules `optim`'s settings, as if it had been used from the start."""
        if optim.kind != self.optim_config.kind:
            raise ValueError(f"a {self.optim_config.kind} optimiser state cannot continue as {optim.kind}")
        milestones = sorted(optim.decay_epochs)
        for phase, optimizer in self.optimizers.items():
            scheduler = self.schedulers[phase]
            decays = bisect.bisect_right(milestones, scheduler.last_epoch)  # epochs completed past a milestone
            rate = optim.lr[phase] * optim.decay_factor**decays
            for group in optimizer.param_groups:
                group["lr"] = rate
                if optim.kind == "sgd":
                    group["momentum"] = optim.momentum[phase]
                else:
                    group["betas"] = optim.adam_betas
            optimizer.clip_grad_norm = optim.clip_grad_norm.get(phase)  # type: ignore[attr-defined]
            scheduler.base_lrs = [optim.lr[phase]] * len(optimizer.param_groups)
            scheduler.milestones = Counter(optim.decay_epochs)
            scheduler.gamma = optim.decay_factor
            scheduler._last_lr = [rate] * len(optimizer.param_groups)
        self.optim_config = optim

    # -- helpers for subclasses --------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where the parameters live."""
        return next(self.parameters()).device

    def prior_sample(self, prior: Prior, n: int, labels: Tensor | None = None) -> Tensor:
        """n prior draws from the training RNG, on the model's device."""
        return prior.sample(n, labels, generator=self.generator)

    def infer(self, x: Tensor) -> EncoderOutput:
        """Encode without gradients for evaluation; a Gaussian encoder's code is its posterior mean."""
        with torch.no_grad():
            out = self.encoder(x.to(self.device))
        return out if out.mean is None else EncoderOutput(out.mean, out.mean, out.logvar, out.logits)
