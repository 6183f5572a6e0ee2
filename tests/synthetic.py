"""A tiny MNIST-shaped dataset written as IDX files: ten learnable classes, made on the spot for tests."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

IMAGE_MAGIC, LABEL_MAGIC = 0x00000803, 0x00000801


def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    """Write a uint8 array in IDX format (gzip when the name ends in .gz)."""
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as handle:
        handle.write(payload)


def synthetic_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n 28x28 uint8 images: class c is a fixed random stroke template, shifted by up to 2 px, plus noise."""
    templates_rng = np.random.default_rng(1234)  # the same ten templates for every split
    templates = (templates_rng.random((10, 28, 28)) < 0.12).astype(np.float32)
    templates = np.clip(templates + np.roll(templates, 1, axis=1) + np.roll(templates, 1, axis=2), 0, 1)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n)
    images = np.empty((n, 28, 28), dtype=np.float32)
    for i, label in enumerate(labels):
        shifted = np.roll(templates[label], tuple(rng.integers(-2, 3, size=2)), axis=(0, 1))
        images[i] = np.clip(shifted * rng.uniform(0.7, 1.0) + rng.normal(0, 0.08, (28, 28)), 0, 1)
    return (images * 255).round().astype(np.uint8), labels.astype(np.uint8)


def write_synthetic_idx_dir(directory: Path, n_train: int = 1200, n_test: int = 300) -> Path:
    """An IDX directory in MNIST's file layout, ready for `aae-pipeline data prepare idx:DIR`."""
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = synthetic_digits(n, seed)
        write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", images, IMAGE_MAGIC)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels, LABEL_MAGIC)
    return directory
