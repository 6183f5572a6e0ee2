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


def synthetic_house_numbers(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n 32x32 colour images in SVHN's .mat layout (X: 32x32x3xN uint8, y: Nx1 labels 1..10, 10 = digit 0):
    class c is the synthetic digit c, tinted with its own colour on a random background, plus noise."""
    grey, digits = synthetic_digits(n, seed)
    rng = np.random.default_rng(seed + 100)
    tints = np.random.default_rng(4321).uniform(0.3, 1.0, (10, 3))  # one colour per class, for every split
    stroke = np.pad(grey, ((0, 0), (2, 2), (2, 2))).astype(np.float32) / 255  # 28x28 -> 32x32
    background = rng.uniform(0.0, 0.4, (n, 1, 1, 3))
    images = background * (1 - stroke[..., None]) + tints[digits][:, None, None, :] * stroke[..., None]
    images = np.clip(images + rng.normal(0, 0.03, images.shape), 0, 1)
    as_mat = (images * 255).round().astype(np.uint8).transpose(1, 2, 3, 0)  # (N, H, W, C) -> (H, W, C, N)
    labels = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(n, 1)
    return np.ascontiguousarray(as_mat), labels


def write_synthetic_svhn_dir(directory: Path, n_train: int = 360, n_test: int = 120, n_extra: int = 0) -> Path:
    """A directory of SVHN-layout .mat files, ready for `aae-pipeline data prepare svhn:DIR`."""
    from scipy.io import savemat

    directory.mkdir(parents=True, exist_ok=True)
    for name, n, seed in (("train", n_train, 10), ("test", n_test, 11), ("extra", n_extra, 12)):
        if n:
            images, labels = synthetic_house_numbers(n, seed)
            savemat(directory / f"{name}_32x32.mat", {"X": images, "y": labels})
    return directory
