"""Use what you trained: load a run directory or an exported model folder, and apply the model to images.

    from pipeline import load_run

    model = load_run("runs/semisup-20261207-101500")   # or a folder `aae-pipeline export` wrote
    probabilities = model.classify(images)              # uint8 (N, 28, 28), or floats in [0, 1]
    codes = model.embed(images)
    digits = model.sample(16, label=3)

Every method takes images as a user has them (uint8 (N, H, W) or (N, C, H, W), or floats in [0, 1]; numpy arrays
or torch tensors), works through them a batch at a time (so any N fits in memory) and returns numpy arrays.
Loading an exported folder needs only torch, safetensors and the aae library; nothing here imports Ray or W&B.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aae.variants import build_model
from aae.variants.base import AAEModel, Readout
from pipeline.errors import UserError, command

FOLDER_CONFIG = "config.json"  # an exported model folder: variant, params, image shape, metrics
FOLDER_WEIGHTS = "model.safetensors"
FOLDER_CARD = "README.md"
FOLDER_FORMAT = "aae-pipeline-model"
FOLDER_VERSION = 1
BATCH = 1000  # images per forward pass: bounded memory, and the batches the evaluate stage scores in
BCE_EPS = 1e-7  # as aae.metrics: pixel probabilities are clamped before the log


@dataclass
class TrainedAAE:
    """A trained model of the AAE family, ready to apply: the model (eval mode), the run's resolved config, its
    test metrics, and the image shape it takes."""

    model: AAEModel
    config: dict[str, Any]  # the run's resolved config (config.yaml), as plain values
    metrics: dict[str, Any]  # the run's test metrics (evaluation.json), {} if it was never evaluated
    image_shape: tuple[int, ...]  # (H, W) grey, (C, H, W) colour
    epoch: int  # the epoch of the weights (the best by validation)
    source: Path
    # What each cluster stands for (the paper's rule on the training digits), where the run was evaluated.
    cluster_labels: np.ndarray | None = None
    batch_size: int = BATCH
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def experiment(self) -> str:
        """The experiment the run trained (e.g. semisup)."""
        return str(self.config.get("experiment", ""))

    @property
    def offers(self) -> tuple[str, ...]:
        """The methods this model can answer."""
        head = {"classes": ("classify",), "clusters": ("cluster",)}.get(self.model.y_head or "", ())
        return (*head, "embed", "encode", "reconstruct", "reconstruction_error", "decode", "sample")

    # -- what a user calls -----------------------------------------------------------------------------
    def classify(self, images: Any) -> np.ndarray:
        """q(y|x), (N, classes): class probabilities (models whose y head was trained on labels)."""
        self._need("classify", self.model.y_head == "classes")
        return self._map(images, lambda x, y: self.model.read(x).probabilities)

    def cluster(self, images: Any) -> tuple[np.ndarray, np.ndarray]:
        """Each image's cluster (argmax q(y|x)) and its probability (models whose y head found clusters)."""
        self._need("cluster", self.model.y_head == "clusters")
        probabilities = self._map(images, lambda x, y: self.model.read(x).probabilities)
        ids = probabilities.argmax(1)
        return ids, probabilities[np.arange(len(ids)), ids]

    def embed(self, images: Any) -> np.ndarray:
        """The representation to plot or compare: the n-D map of the dimensionality-reduction models, the style
        code z of the others."""
        return self._map(images, lambda x, y: self.model.read(x).embedding)

    def encode(self, images: Any) -> np.ndarray:
        """What the decoder reads for each image (decode() turns it back into one)."""
        return self._map(images, lambda x, y: self.model.read(x).code)

    def reconstruct(self, images: Any, labels: Any = None) -> np.ndarray:
        """Each image through the autoencoder: floats in [0, 1] of the model's image shape. The supervised AAE's
        decoder reads the label, so it needs `labels`."""
        labels = self._labels_for_decoder(labels, required=True)
        flat = self._map(images, lambda x, y: self.model.read(x, y, reconstruct=True).reconstruction, labels)
        return flat.reshape(len(flat), *self.image_shape)

    def reconstruction_error(self, images: Any, labels: Any = None) -> np.ndarray:
        """Per image, the reconstruction's binary cross-entropy summed over pixels (nats): a ready anomaly score
        (the mean over the test split is the run's test/recon_bce)."""
        labels = self._labels_for_decoder(labels, required=True)
        return self._map(images, lambda x, y: bce_per_image(x, self.model.read(x, y, reconstruct=True)), labels)

    def decode(self, codes: Any, labels: Any = None) -> np.ndarray:
        """Images (floats in [0, 1], the model's image shape) for codes as encode() gives them; the supervised
        AAE's codes are styles, rendered as `labels`."""
        codes = torch.as_tensor(np.asarray(codes, dtype=np.float32))
        if codes.ndim != 2 or codes.shape[1] != self._code_width():
            raise UserError(f"codes of shape {tuple(codes.shape)} do not fit this model",
                            f"pass (N, {self._code_width()}) codes, as encode() returns them")
        label_tensor = self._label_tensor(labels, len(codes), "decode") if labels is not None else None
        if hasattr(self.model, "decode_with_labels"):
            if label_tensor is None:
                raise UserError("this model's decoder reads a class label beside the style code",
                                "pass labels=… (one class per code)")
            render: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor] = self.model.decode_with_labels
        elif label_tensor is not None:
            raise UserError("this model's decoder reads the code alone", "call decode(codes) without labels")
        else:
            def render(chunk: torch.Tensor, _: torch.Tensor | None) -> torch.Tensor:
                return self.model.decode(chunk.to(self.device))
        parts = []
        with torch.no_grad():
            for start in range(0, len(codes), self.batch_size):
                part = codes[start : start + self.batch_size]
                chunk_labels = None if label_tensor is None else label_tensor[start : start + self.batch_size]
                parts.append(render(part, chunk_labels).cpu().numpy())
        flat = np.concatenate(parts) if parts else np.zeros((0, math.prod(self.image_shape)), np.float32)
        return flat.reshape(len(flat), *self.image_shape)

    def sample(self, n: int, label: int | None = None, seed: int = 0) -> np.ndarray:
        """n images drawn from the model's prior (floats in [0, 1], the model's image shape), each showing class
        or cluster `label` on models that can be told one; the same seed gives the same images."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise UserError(f"the number of samples must be a positive whole number (got {n!r})", "pass n ≥ 1")
        labels = None
        if label is not None:
            count = self.model.sample_labels
            if count is None:
                raise UserError(f"{self._name()} samples from its prior alone and takes no label",
                                "sample without a label")
            if isinstance(label, bool) or not isinstance(label, int | np.integer) or not 0 <= label < count:
                raise UserError(f"label {label!r} is out of range for {self._name()}",
                                f"pass a label from 0 to {count - 1}")
            labels = torch.full((n,), int(label), dtype=torch.long)
        parts = []
        with torch.no_grad(), torch.random.fork_rng(devices=[]):  # the priors draw from the global RNG
            torch.manual_seed(seed)
            for start in range(0, n, self.batch_size):
                size = min(self.batch_size, n - start)
                chunk = None if labels is None else labels[start : start + size]
                parts.append(self.model.sample(size, chunk).cpu().numpy())
        flat = np.concatenate(parts)
        return flat.reshape(n, *self.image_shape)

    def predict(self, images: Any, labels: Any = None) -> dict[str, np.ndarray]:
        """Every output the model has, for each image, from one pass: `class`/`class_probability` or
        `cluster`/`cluster_probability` (and `cluster_label`, what the cluster stands for), `embedding`, `style`
        (where it differs from the embedding), `reconstruction_error` (for the supervised AAE only with labels)."""
        labels = self._labels_for_decoder(labels, required=False)
        reads_labels = hasattr(self.model, "decode_with_labels")
        reconstruct = labels is not None or not reads_labels

        def columns(x: torch.Tensor, y: torch.Tensor | None) -> dict[str, np.ndarray]:
            return self._columns(x, self.model.read(x, y, reconstruct=reconstruct))

        outputs: dict[str, list[np.ndarray]] = {}
        for x, y in self._batches(images, labels):
            for name, value in columns(x, y).items():
                outputs.setdefault(name, []).append(value)
        if not outputs:  # no images: the same columns, empty
            return {name: value[:0] for name, value in columns(*self._probe(labels)).items()}
        return {name: np.concatenate(parts) for name, parts in outputs.items()}

    # -- internals -------------------------------------------------------------------------------------
    def _columns(self, x: torch.Tensor, readout: Readout) -> dict[str, np.ndarray]:
        columns: dict[str, np.ndarray] = {}
        if readout.probabilities is not None:
            probabilities = readout.probabilities.cpu()
            best, ids = probabilities.max(1)
            kind = "class" if self.model.y_head == "classes" else "cluster"
            columns[kind] = ids.numpy().astype(np.int64)
            columns[f"{kind}_probability"] = best.numpy()
            if kind == "cluster" and self.cluster_labels is not None:
                columns["cluster_label"] = self.cluster_labels[columns["cluster"]]
        columns["embedding"] = readout.embedding.cpu().numpy()
        if getattr(self.model, "embeds_representation", False):
            columns["style"] = self.model.infer(x).code.cpu().numpy()
        if readout.reconstruction is not None:
            columns["reconstruction_error"] = bce_per_image(x, readout).cpu().numpy()
        return columns

    def _map(self, images: Any, fn: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
             labels: Any = None) -> np.ndarray:
        parts = [fn(x, y).cpu().numpy() for x, y in self._batches(images, labels)]
        return np.concatenate(parts) if parts else fn(*self._probe(labels)).cpu().numpy()[:0]

    def _probe(self, labels: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One blank image (and label): what an empty input's outputs are shaped after."""
        x = torch.zeros(1, math.prod(self.image_shape), device=self.device)
        return x, None if labels is None else torch.zeros(1, dtype=torch.long, device=self.device)

    def _batches(self, images: Any, labels: Any = None) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """(flat [0, 1] floats on the device, labels) a batch at a time, each batch checked as it is read."""
        array = as_image_array(images, self.image_shape)
        label_tensor = None if labels is None else self._label_tensor(labels, len(array), "labels")
        with torch.no_grad():
            for start in range(0, len(array), self.batch_size):
                x = to_unit_floats(array[start : start + self.batch_size], self.image_shape, start)
                y = None if label_tensor is None else label_tensor[start : start + self.batch_size].to(self.device)
                yield x.to(self.device), y

    def _label_tensor(self, labels: Any, n: int, what: str) -> torch.Tensor:
        values = np.asarray(labels)
        count = self.model.sample_labels or 0
        if values.shape != (n,) or not np.issubdtype(values.dtype, np.integer):
            raise UserError(f"{what}: {n} whole-number class labels are needed (got {values.dtype} of shape "
                            f"{values.shape})", "pass one class per image, e.g. a uint8 or int64 array")
        if len(values) and (values.min() < 0 or values.max() >= count):
            raise UserError(f"{what}: labels must lie in 0…{count - 1} (found {values.min()}…{values.max()})",
                            "pass this model's classes")
        return torch.as_tensor(values.astype(np.int64))

    def _labels_for_decoder(self, labels: Any, required: bool) -> Any:
        """The labels to hand the decoder: the given ones where it reads labels (the supervised AAE), else none."""
        if not hasattr(self.model, "decode_with_labels"):
            return None
        if labels is None and required:
            raise UserError(f"{self._name()}'s decoder reads each image's class label",
                            "pass labels=… (one class per image) to reconstruct with it")
        return labels

    def _code_width(self) -> int:
        return int(self.model.read(torch.zeros(1, math.prod(self.image_shape), device=self.device)).code.shape[1])

    def _need(self, method: str, available: bool) -> None:
        if not available:
            raise UserError(f"{self._name()} has no {method}()", f"it offers {', '.join(self.offers)}")

    def _name(self) -> str:
        return f"{self.experiment or 'this run'} ({type(self.model).__name__})"


def bce_per_image(x: torch.Tensor, readout: Readout) -> torch.Tensor:
    """Binary cross-entropy of each row's reconstruction, summed over pixels (float64, as the test metric)."""
    p = readout.reconstruction.double().clamp(BCE_EPS, 1 - BCE_EPS)
    x64 = x.double()
    return -(x64 * p.log() + (1 - x64) * (1 - p).log()).sum(1)


# -- images as users have them ---------------------------------------------------------------------------
def as_image_array(images: Any, image_shape: tuple[int, ...]) -> Any:
    """Check an image batch's shape and type (not yet its values, which to_unit_floats reads a batch at a time)."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu()
    elif not hasattr(images, "shape") or not hasattr(images, "dtype"):
        images = np.asarray(images)
    shape = tuple(images.shape)
    grey = len(image_shape) == 2
    wanted = f"(N, {', '.join(map(str, image_shape))})" + (f" or (N, 1, {image_shape[0]}, {image_shape[1]})"
                                                           if grey else "")
    fits = shape[1:] == image_shape or (grey and shape[1:] == (1, *image_shape))
    if not fits:
        raise UserError(f"images of shape {shape} do not fit this model, which takes {wanted}",
                        _shape_hint(shape, image_shape))
    dtype = images.dtype
    if not (_is_uint8(dtype) or _is_float(dtype)):
        raise UserError(f"images of type {dtype} are not pixels this model reads",
                        "pass uint8 (0-255) or floats in [0, 1]")
    return images


def _shape_hint(shape: tuple[int, ...], image_shape: tuple[int, ...]) -> str:
    """What to do about images of the wrong shape, for the likely mistakes."""
    height_width = image_shape[-2:]
    if shape == image_shape:
        return "a single image needs a batch axis: images[None]"
    if len(image_shape) == 2 and len(shape) == 4 and 3 in (shape[1], shape[-1]):
        return "this model takes grey images: convert colour ones to grey first"
    if len(shape) == 4 and shape[1:3] == height_width and shape[-1] in (1, 3):
        return "channels come first: np.moveaxis(images, -1, 1)"
    return f"pass images of the size this model was trained on ({' x '.join(map(str, height_width))})"


def to_unit_floats(batch: Any, image_shape: tuple[int, ...], first_row: int = 0) -> torch.Tensor:
    """One batch as flat float32 in [0, 1]: uint8 is divided by 255, floats are checked to lie in [0, 1]."""
    # A copy of each batch: a memory-mapped .npy is read-only, and torch will not wrap read-only memory.
    tensor = batch if isinstance(batch, torch.Tensor) else torch.from_numpy(np.array(batch))
    tensor = tensor.reshape(len(tensor), -1)
    if tensor.dtype == torch.uint8:
        return tensor.float().div_(255.0)
    tensor = tensor.float()
    if len(tensor) and not (bool(torch.isfinite(tensor).all()) and float(tensor.min()) >= 0
                            and float(tensor.max()) <= 1):
        bad = tensor[~torch.isfinite(tensor)] if not bool(torch.isfinite(tensor).all()) else tensor
        shown = "NaN or infinite values" if bad is not tensor else \
            f"values from {float(tensor.min()):g} to {float(tensor.max()):g}"
        raise UserError(f"float images must lie in [0, 1]; rows from {first_row} hold {shown}",
                        "divide 0-255 pixels by 255 (or pass them as uint8)")
    return tensor


def _is_uint8(dtype: Any) -> bool:
    return dtype in (np.uint8, torch.uint8)


def _is_float(dtype: Any) -> bool:
    if isinstance(dtype, torch.dtype):
        return dtype.is_floating_point
    return np.issubdtype(dtype, np.floating)


# -- loading ---------------------------------------------------------------------------------------------
def load_run(path: str | Path, device: str | torch.device = "cpu") -> TrainedAAE:
    """A trained model from a run directory (its best checkpoint) or from an exported model folder."""
    path = Path(path).expanduser()
    device = torch.device(device)
    if (path / FOLDER_CONFIG).is_file():
        return _load_folder(path, device)
    if (path / "config.yaml").is_file():
        return _load_run_directory(path, device)
    raise UserError(f"{path} is neither a run directory (no config.yaml) nor an exported model folder (no "
                    f"{FOLDER_CONFIG})", "pass a directory `aae-pipeline run` made, or one `aae-pipeline export` "
                    "wrote")


def build_trained(variant: str, params: dict[str, Any], image_shape: tuple[int, ...],
                  weights: dict[str, torch.Tensor], device: torch.device, where: Path, fix: str) -> AAEModel:
    """The variant with these weights, in eval mode on `device`; weights that do not fit are one clear error."""
    model = build_model(variant, {**params, "input_dim": math.prod(image_shape)})
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0][:160]
        raise UserError(f"the weights in {where} do not fit a {variant} model of this config ({first})", fix) \
            from None
    return model.to(device).eval()


def _load_folder(path: Path, device: torch.device) -> TrainedAAE:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    fix = f"export it again: {command('aae-pipeline export RUN_DIR --out', path, '--force')}"
    try:
        card = json.loads((path / FOLDER_CONFIG).read_text())
        if card.get("format") != FOLDER_FORMAT:
            raise UserError(f"{path / FOLDER_CONFIG} is not an aae-pipeline model folder's config",
                            "pass a folder `aae-pipeline export` wrote")
        if card.get("format_version", 0) > FOLDER_VERSION:
            raise UserError(f"{path} was exported by a newer aae-pipeline (format {card['format_version']})",
                            "upgrade aae-pipeline to load it")
        variant, params, shape = card["variant"], card["params"], tuple(int(d) for d in card["image_shape"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        if isinstance(err, UserError):
            raise
        raise UserError(f"{path / FOLDER_CONFIG} is damaged ({type(err).__name__})", fix) from None
    try:
        weights = load_file(str(path / FOLDER_WEIGHTS), device="cpu")
    except (OSError, SafetensorError) as err:
        raise UserError(f"{path / FOLDER_WEIGHTS} cannot be read ({str(err).splitlines()[0][:120]})", fix) from None
    model = build_trained(variant, params, shape, weights, device, path / FOLDER_WEIGHTS, fix)
    labels = card.get("cluster_labels")
    return TrainedAAE(model=model, config=card.get("config", {}), metrics=card.get("metrics", {}),
                      image_shape=shape, epoch=int(card.get("epoch", 0)), source=path,
                      cluster_labels=None if labels is None else np.asarray(labels, dtype=np.int64), device=device)


def _load_run_directory(path: Path, device: torch.device) -> TrainedAAE:
    from pipeline.checkpoints import DamagedCheckpoint, read_checkpoint
    from pipeline.config import load_config
    from pipeline.rundir import RunDir, holder

    run = RunDir(path)
    config = load_config(str(path / "config.yaml"))
    manifest = run.read_manifest()
    train = manifest.get("stages", {}).get("train", {})
    driver = holder(path)
    if train.get("status") == "running" and driver is not None:
        raise UserError(f"{path} is still training ({driver})", "load it once that `aae-pipeline run` has finished")
    if not run.best_checkpoint.is_file():
        diverged = run.divergence()
        if diverged is not None:
            raise UserError(f"{path} holds no model: training diverged in epoch {diverged['diverged']}, before any "
                            "checkpoint", "train it again with lower learning rates (`aae-pipeline run` said which)")
        raise UserError(f"{path} has no trained checkpoint",
                        f"train it first: {command('aae-pipeline run --resume', path)}")
    try:
        state = read_checkpoint(run.best_checkpoint)
    except DamagedCheckpoint as damaged:
        raise UserError(damaged.message, f"retrain it: {command('aae-pipeline run --resume', path, '--from train')}")\
            from None
    shape = run_image_shape(config, manifest)
    model = build_trained(config.model.variant, config.model.params, shape, state["training_state"]["model"],
                          device, run.best_checkpoint, f"retrain it: {command('aae-pipeline run --resume', path)}")
    evaluation = _read_json(path / "evaluation.json")
    metrics = evaluation.get("metrics") or {k: v for k, v in manifest.get("metrics", {}).items()
                                            if k.startswith("test/")}
    labels = evaluation.get("tables", {}).get("cluster_labels", {}).get("rows")
    return TrainedAAE(model=model, config=config.model_dump(mode="json"), metrics=metrics, image_shape=shape,
                      epoch=int(state["epoch"]) + 1, source=path, device=device,
                      cluster_labels=None if labels is None else np.asarray([row[1] for row in labels], np.int64))


def run_image_shape(config: Any, manifest: dict[str, Any]) -> tuple[int, ...]:
    """The image shape a run's model takes: as its prepare stage recorded it, else its dataset's, else the one
    its input size implies (784: MNIST's 28x28, 3072: SVHN's 3x32x32)."""
    recorded = manifest.get("stages", {}).get("prepare", {}).get("outputs", {}).get("image_shape")
    if recorded:
        return tuple(int(d) for d in recorded)
    try:
        from pipeline.data import image_shape

        return image_shape(config.data.dataset, Path(config.data.data_dir) if config.data.data_dir else None)
    except UserError:
        size = int(config.model.params.get("input_dim", 784))
        return {784: (28, 28), 3072: (3, 32, 32)}.get(size, (size,))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
