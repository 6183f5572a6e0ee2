"""Images to apply a trained model to: a split of a dataset the project reads, or a user's own array file.

A file is read as it lies, without a copy into a data directory: `.npy` (memory-mapped, so a file larger than
memory is read a batch at a time), `.npz` (its `images` array, or `x`, or its only one; labels from `labels` or
`y`), or Parquet (an `image` column of raw bytes, as prepared datasets store them, or of lists of pixels; labels
from `label`). Shapes, types and value ranges are checked where the model reads them (pipeline.inference).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import UserError

FILE_SUFFIXES = (".npy", ".npz", ".parquet")
IMAGE_KEYS = ("images", "x", "X")
LABEL_KEYS = ("labels", "label", "y", "Y")
DATASET_SPLIT = "test"  # the split scored when a dataset is named without one


@dataclass
class Images:
    """Images (N, …) as read (an array, maybe memory-mapped), their labels where the source has them, and where
    they came from."""

    images: Any
    labels: np.ndarray | None
    source: str


def is_image_file(spec: str) -> bool:
    """Whether `spec` names an array file rather than a dataset."""
    return Path(spec).suffix.lower() in FILE_SUFFIXES


def read_images(spec: str, split: str | None = None, data_dir: Path | None = None,
                image_shape: tuple[int, ...] | None = None) -> Images:
    """The images `spec` names: a dataset ('mnist', 'svhn', 'idx:/dir', 'svhn:/dir'; `split`, default test), or an
    .npy / .npz / Parquet file. `image_shape` gives flat rows of raw bytes (Parquet) their shape."""
    if not is_image_file(spec):
        from pipeline.data import load_split

        chosen = split or DATASET_SPLIT
        images, labels = load_split(spec, chosen, data_dir)
        return Images(images, labels, f"{spec} ({chosen} split)")
    if split is not None:
        raise UserError(f"--split {split} names a split of a dataset, and {spec} is a file",
                        "leave --split out for an image file")
    path = Path(spec).expanduser()
    if not path.is_file():
        raise UserError(f"image file {path} does not exist", "check the path")
    reader = {".npy": _read_npy, ".npz": _read_npz, ".parquet": _read_parquet}[path.suffix.lower()]
    images, labels = reader(path)
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
            raise UserError(f"{path}'s labels are not one whole number per image ({labels.dtype}, shape "
                            f"{labels.shape} for {len(images)} images)", "store one integer label per image")
    if image_shape is not None and getattr(images, "ndim", 0) == 2 and images.shape[1] == np.prod(image_shape):
        images = images.reshape(len(images), *image_shape)  # raw bytes per row: the model's shape gives them form
    return Images(images, None if labels is None else labels.astype(np.int64), str(path))


def _read_npy(path: Path) -> tuple[Any, None]:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False), None
    except ValueError as err:  # object arrays (pickles), a damaged header
        raise UserError(f"{path} is not a numeric .npy array ({str(err).splitlines()[0][:100]})",
                        "save the images with np.save(path, uint8_or_float_array)") from None
    except OSError as err:
        raise UserError(f"{path} cannot be read ({err.strerror or err})", "check the file") from None


def _read_npz(path: Path) -> tuple[Any, np.ndarray | None]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = list(archive.files)
            key = next((k for k in IMAGE_KEYS if k in names), names[0] if len(names) == 1 else None)
            if key is None:
                raise UserError(f"{path} holds arrays {names} and none is called {' or '.join(IMAGE_KEYS)}",
                                "save the images as `images` (np.savez(path, images=…, labels=…))")
            label_key = next((k for k in LABEL_KEYS if k in names and k != key), None)
            return archive[key], None if label_key is None else archive[label_key]
    except (ValueError, OSError, zipfile.BadZipFile) as err:
        raise UserError(f"{path} is not a readable .npz file ({str(err).splitlines()[0][:100]})",
                        "save the images with np.savez(path, images=…)") from None


def _read_parquet(path: Path) -> tuple[Any, np.ndarray | None]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with pq.ParquetFile(path) as parquet:
            table = parquet.read()
    except (OSError, pa.ArrowException) as err:
        raise UserError(f"{path} cannot be read as Parquet ({str(err).splitlines()[0][:100]})", "check the file") \
            from None
    if "image" not in table.column_names:
        raise UserError(f"{path} has no `image` column (it has {', '.join(table.column_names)})",
                        "store each image in a column named image (bytes, or a list of pixels)")
    column = table.column("image").combine_chunks()
    kind = column.type
    if pa.types.is_fixed_size_binary(kind) or pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        rows = column.to_pylist()
        if len({len(row) for row in rows}) > 1:
            raise UserError(f"{path}'s images are not all the same size", "store images of one size")
        images = np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(len(rows), -1)
    elif pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        try:
            images = np.stack([np.asarray(row) for row in column.to_numpy(zero_copy_only=False)])
        except ValueError:
            raise UserError(f"{path}'s images are not all the same size", "store images of one size") from None
    else:
        raise UserError(f"{path}'s image column holds {kind}", "store raw uint8 bytes or lists of pixels per image")
    labels = table.column("label").to_numpy() if "label" in table.column_names else None
    return images, labels
