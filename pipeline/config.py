"""Typed run configuration: conf/base.yaml + conf/experiment/<name>.yaml + --set overrides, validated once."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import UserError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
EXPERIMENT_DIR = CONF_DIR / "experiment"
# Sizes and class counts of the known datasets' training splits, so an impossible label count fails before
# Ray starts; for idx: data they are known only once it is loaded, where the prepare stage checks them.
# SVHN's 73,257 training images less the 10,000 held out for validation (pipeline.data.svhn).
KNOWN_TRAIN_SIZES = {"mnist": 50_000, "svhn": 63_257}
KNOWN_CLASSES = {"mnist": 10, "svhn": 10}


class Strict(BaseModel):
    """Base for config sections: unknown keys are errors, values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Strict):
    """The `data:` section: which images, how many labels the model may see."""

    dataset: str = Field("mnist", description="`mnist`, `svhn`, `idx:/dir` (MNIST-format IDX files) or `svhn:/dir` "
                                              "(SVHN's .mat files)")
    labels: int | Literal["all"] = Field("all", description="labelled training examples: a count, balanced across "
                                                            "classes, or `all`")
    label_seed: int = Field(0, ge=0, description="which balanced labelled subset")
    limit: int | None = Field(None, gt=0, description="train on the first N training images only (quick runs; "
                                                      "validation and test stay whole)")
    data_dir: str | None = Field(None, description="where prepared datasets live; null: $AAE_DATA_DIR, else "
                                                   "~/.cache/aae-pipeline/data")

    @field_validator("labels", mode="before")
    @classmethod
    def _count_or_all(cls, value: Any) -> Any:
        from pipeline.data.labels import parse_n_labels  # here: the data package imports pyarrow

        try:
            count = parse_n_labels(value)
        except UserError:
            raise ValueError("must be a positive whole number of labelled examples or 'all'") from None
        return "all" if count is None else count


class ModelConfig(Strict):
    """The `model:` section: the variant and its own parameters."""

    variant: str = Field("semi_supervised", description="a variant's name (`aae-pipeline experiments` shows them "
                                                        "in use) or an import path `package.module:Class`")
    # Passed to the variant's own typed config in aae, which rejects keys it does not know.
    params: dict[str, Any] = Field(default_factory=dict, description="the variant's own config (below); unknown "
                                                                     "keys are errors")

    def resolved(self) -> Any:
        """The variant's own typed config: params with the variant's defaults for the keys they leave out."""
        from aae.variants import variant_class

        return variant_class(self.variant).config_class(**self.params)


class PositivePerPhase(Strict):
    """A positive number, or null, for each training phase (aae.optim.PHASES); a subclass says what it is."""

    reconstruction: float | None = Field(None, gt=0, description="the reconstruction phase (encoder and decoder)")
    discriminator: float | None = Field(None, gt=0, description="the discriminators' phase")
    generator: float | None = Field(None, gt=0, description="the generator phase (the encoder, fooling the "
                                                            "discriminators)")
    supervised: float | None = Field(None, gt=0, description="the supervised phase (q(y|x) on the labelled "
                                                             "examples)")


class PhaseRates(PositivePerPhase):
    """Learning rate per phase; null takes the optimiser's default (SGD: the paper's 0.01 / 0.1 / 0.1 / 0.1)."""


class PhaseMomenta(Strict):
    """SGD momentum per phase; null takes the paper's 0.9 / 0.1 / 0.1 / 0.9."""

    reconstruction: float | None = Field(None, ge=0, lt=1, description="the reconstruction phase")
    discriminator: float | None = Field(None, ge=0, lt=1, description="the discriminators' phase")
    generator: float | None = Field(None, ge=0, lt=1, description="the generator phase")
    supervised: float | None = Field(None, ge=0, lt=1, description="the supervised phase")


class PhaseClips(PositivePerPhase):
    """Largest gradient norm per phase (null: no clipping), applied after the workers' gradients are averaged."""


class TrainConfig(Strict):
    """The `train:` section: the optimisation (the paper's recipe unless an experiment says otherwise)."""

    epochs: int = Field(100, gt=0, description="training epochs (`--epochs`)")
    batch_size: int = Field(100, gt=0, description="the global batch, split across the workers")
    seed: int = Field(0, ge=0, description="the random seed (`--seed`): one worker gives the same numbers every time")
    optimizer: Literal["sgd", "adam"] = Field("sgd", description="`sgd` (the paper's, with momentum) or `adam`")
    lr: PhaseRates = Field(default_factory=PhaseRates, description="learning rate per phase")
    momentum: PhaseMomenta = Field(default_factory=PhaseMomenta, description="SGD momentum per phase")
    clip_grad_norm: PhaseClips = Field(default_factory=PhaseClips, description="largest gradient norm per phase")
    decay_epochs: list[int] = Field(default_factory=lambda: [50, 1000],
                                    description="every rate is multiplied by decay_factor after each of these epochs")
    decay_factor: float = Field(0.1, gt=0, le=1, description="the step decay's factor")
    labelled_batch_size: int = Field(100, gt=0, description="labelled examples per supervised step (global)")


class ExecutionConfig(Strict):
    """The `run:` section: how and where training executes (workers, devices, cluster, precision, retries)."""

    workers: int = Field(1, gt=0, description="Ray Train workers, data parallel (`--workers`)")
    gpus_per_worker: float = Field(0, ge=0, description="0 trains on CPUs with gloo; more on CUDA with NCCL "
                                                        "(`--gpus-per-worker`)")
    cpus_per_worker: float | None = Field(None, gt=0, description="CPUs each worker asks Ray for; null: 1 (a local "
                                                                  "run shares the cores out as threads)")
    address: str | None = Field(None, description="an existing Ray cluster, host:port (`--address`); null starts "
                                                  "a private local one")
    max_failures: int = Field(2, ge=0, description="restarts from the last checkpoint (a lost worker or node, a "
                                                   "failed Ray Train controller) before the run fails")
    amp: bool = Field(False, description="bf16 autocast on a GPU (faster with CUDA graphs)")
    data_on_device: bool = Field(False, description="keep the training set on the GPU when training eagerly "
                                                    "(CUDA graphs always do)")
    cuda_graphs: bool = Field(True, description="on a GPU, replay each training step as a captured CUDA graph; "
                                                "false: eager")


class EvaluateConfig(Strict):
    """The `evaluate:` section."""

    parzen: bool = Field(True, description="estimate the Parzen-window log-likelihood (false: evaluation.json's "
                                           "notes say why not)")
    parzen_samples: int = Field(10_000, gt=0, description="generated samples the Parzen window is built from")
    parzen_validation: int = Field(1_000, gt=0, description="validation images the window's width is chosen on")


class TrackingConfig(Strict):
    """The `tracking:` section: Weights & Biases."""

    wandb: Literal["auto", "online", "offline", "disabled"] = Field(
        "auto", description="`auto`: online with W&B credentials, else offline files in the run directory (`--wandb`)")
    project: str = Field("aae-pipeline", description="the W&B project")
    entity: str | None = Field(None, description="the W&B entity (team or user); null: your default")


class Config(Strict):
    """A whole run's config: conf/base.yaml, then an experiment's file, then --set overrides."""

    experiment: str = Field(description="the experiment's name (its file's, for a YAML given by path)")
    description: str = Field("", description="one line that `aae-pipeline experiments` shows")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    run: ExecutionConfig = Field(default_factory=ExecutionConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _labels_fit_the_data(self) -> Config:
        available = self.data.limit or KNOWN_TRAIN_SIZES.get(self.data.dataset)
        classes = KNOWN_CLASSES.get(self.data.dataset)
        if isinstance(self.data.labels, int) and classes is not None and self.data.labels < classes:
            raise ValueError(
                f"data.labels={self.data.labels} is fewer than the {classes} classes of {self.data.dataset}: a "
                f"balanced labelled subset needs at least one per class, so use at least {classes} or 'all'"
            )
        if isinstance(self.data.labels, int) and available is not None and self.data.labels > available:
            raise ValueError(
                f"data.labels={self.data.labels} is more than the {available} training examples available"
            )
        if self.run.workers > 1 and 0 < self.run.gpus_per_worker < 1:
            # NCCL refuses two ranks of one group on one device, and Ray packs GPU shares onto one GPU.
            raise ValueError(
                f"{self.run.workers} workers with {self.run.gpus_per_worker:g} GPU each would share a GPU, which "
                "NCCL cannot do: give each worker a whole GPU (--gpus-per-worker 1), or train on one worker "
                "(a GPU share suits one worker, or a Tune trial with --workers-per-trial 1)"
            )
        if self.train.batch_size < self.run.workers:
            raise ValueError(
                f"train.batch_size={self.train.batch_size} cannot be split across {self.run.workers} workers"
            )
        return self


def list_experiments() -> dict[str, str]:
    """Every experiment under conf/experiment/, name → one-line description."""
    out = {}
    for path in sorted(EXPERIMENT_DIR.glob("*.yaml")):
        out[path.stem] = str(read_yaml(path).get("description", "")).strip()
    return out


def load_config(experiment: str, overrides: list[str] | None = None, extra: dict[str, Any] | None = None) -> Config:
    """Resolve an experiment name (or a YAML file path) plus `key=value` overrides into a validated Config."""
    raw = _deep_merge(read_yaml(CONF_DIR / "base.yaml"), _experiment_yaml(experiment))
    raw.setdefault("experiment", Path(experiment).stem)
    for override in overrides or []:
        key, value = _parse_override(override)
        _set_key(raw, key, value)
    for key, value in (extra or {}).items():
        if value is not None:
            _set_key(raw, key, value)
    return validate_config(raw)


def validate_config(raw: dict[str, Any]) -> Config:
    """Build a Config from a plain dict, turning the first validation problem into a one-line UserError."""
    try:
        config = Config.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "config"
        given = f" (got {first['input']!r})" if "input" in first and not isinstance(first["input"], dict) else ""
        raise UserError(
            f"config error at {where}: {first['msg']}{given}",
            "fix the value in the experiment YAML or the --set override",
        ) from None
    _check_model_params(config)
    return config


def config_to_yaml(config: Config) -> str:
    """The resolved config as YAML, loadable again by `aae-pipeline run FILE.yaml`."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def flat_config(config: Config | dict[str, Any]) -> dict[str, Any]:
    """Every leaf of a config (or of its dump) as a dotted key (model.params included) → its value."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else key, item)
        else:
            flat[prefix] = value

    walk("", config if isinstance(config, dict) else config.model_dump(mode="json"))
    return flat


def config_changes(old: Config | dict[str, Any], new: Config | dict[str, Any]) -> list[str]:
    """The dotted keys whose value differs between two configs."""
    before, after = flat_config(old), flat_config(new)
    return sorted(key for key in before.keys() | after.keys() if before.get(key) != after.get(key))


def _check_model_params(config: Config) -> None:
    """Let the aae variant's own typed config reject unknown or ill-typed parameters now, before Ray starts."""
    from aae.variants import VARIANTS, build_model, variant_class

    try:
        variant_class(config.model.variant)
    except ValueError as err:
        raise UserError(
            f"config error at model.variant: {err}",
            f"choose one of: {', '.join(sorted(VARIANTS))}, or an import path package.module:Class",
        ) from None
    try:  # building the (untrained) nets takes milliseconds and checks every parameter the variant has
        build_model(config.model.variant, config.model.params)
    except (ValueError, TypeError) as err:
        raise UserError(f"config error at model.params: {err}", "fix the experiment YAML or --set") from None


def _experiment_yaml(experiment: str) -> dict[str, Any]:
    """The experiment's YAML: a name under conf/experiment/ or the path of a YAML file (e.g. a sweep's best)."""
    as_path = Path(experiment)
    if as_path.suffix in (".yaml", ".yml"):
        if not as_path.is_file():
            raise UserError(f"config file {experiment} does not exist", "check the path")
        path = as_path
    else:
        path = EXPERIMENT_DIR / f"{experiment}.yaml"
        if not path.is_file():
            known = ", ".join(list_experiments())
            raise UserError(f"unknown experiment {experiment!r}", f"choose one of: {known}")
    raw = read_yaml(path)
    # Every experiment names its model; a file that does not (e.g. an empty one) would silently run the base
    # defaults, a 100-epoch semi-supervised run, under the file's name.
    model = raw.get("model")
    if not isinstance(model, dict) or "variant" not in model:
        problem = "is empty" if not raw else "does not set model.variant"
        raise UserError(f"config file {path} {problem}, so it names no experiment to run",
                        "set at least model.variant (see `aae-pipeline show-config semisup` for a full config)")
    return raw


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from a file; bad syntax or a non-mapping is a one-line UserError naming the line."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not UTF-8 text (byte {err.start} is {err.object[err.start]:#04x})",
                        "save it as a UTF-8 YAML file") from None
    except OSError as err:
        raise UserError(f"cannot read {path} ({err.strerror or err})", "check the path and its permissions") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"malformed YAML in {path}{where}", "fix the file's syntax") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping of config keys", "fix the file")
    return data


def _deep_merge(base: dict[str, Any], diff: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in diff.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _parse_override(override: str) -> tuple[str, Any]:
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise UserError(f"bad override {override!r}", "write overrides as --set section.key=value")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    return key.strip(), value


def _set_key(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Set a dotted key; every part must name a config field, except free-form keys under model.params."""
    parts = dotted.split(".")
    schema: Any = Config
    node = raw
    for depth, part in enumerate(parts):
        if schema is not None:  # None: inside a free-form mapping such as model.params
            field = schema.model_fields.get(part)
            if field is None:
                raise UserError(
                    f"unknown config key {dotted!r}", "see `aae-pipeline show-config EXPERIMENT` for the keys"
                )
            annotation = field.annotation
            schema = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        if depth == len(parts) - 1:
            node[part] = value
        else:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
