"""Read a directory of IDX files (the format MNIST-style datasets ship as) into uint8 arrays."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from pipeline.errors import UserError

# IDX magic: two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions.
UBYTE = 0x08
IDX_FILES = {
    "train_images": ("train-images-idx3-ubyte", 3),
    "train_labels": ("train-labels-idx1-ubyte", 1),
    "test_images": ("t10k-images-idx3-ubyte", 3),
    "test_labels": ("t10k-labels-idx1-ubyte", 1),
}
# MNIST holds out the last 10,000 of its 60,000 training images: 1/6, kept for smaller sets.
VALIDATION_FRACTION = 1 / 6
MAX_VALIDATION = 10_000


def find_idx_file(directory: Path, stem: str) -> Path:
    """The plain or gzipped IDX file named `stem` in `directory`; a UserError if neither exists."""
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise UserError(
        f"IDX file {stem}[.gz] is missing from {directory}",
        "put train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
        "t10k-labels-idx1-ubyte (plain or .gz) in that directory",
    )


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """One IDX file as a uint8 array of `ndim` dimensions; a UserError naming the file if it is malformed."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise _bad(path, f"cannot be read ({err.strerror or err})") from None
    if raw[:2] == b"\x1f\x8b":  # gzip magic: decide by content, not by the name's suffix
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise _bad(path, f"is not a valid gzip file ({err})") from None
    if len(raw) < 4:
        raise _bad(path, f"is too short to be an IDX file ({len(raw)} bytes)")
    if raw[0] != 0 or raw[1] != 0 or raw[2] != UBYTE or raw[3] != ndim:
        raise _bad(path, f"has the wrong magic number {raw[:4].hex()} (expected 000008{ndim:02x}, unsigned bytes)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise _bad(path, "is truncated inside its header")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise _bad(path, f"holds {len(raw) - header} data bytes but its header {shape} needs {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def read_idx_dir(directory: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """train / validation / test (images, int64 labels) from an IDX directory; validation is train's tail."""
    directory = directory.expanduser()
    if not directory.is_dir():
        raise UserError(f"IDX directory {directory} does not exist", "pass idx:/path/to/an/existing/directory")
    # Look for every file before reading any, so a missing one is reported without a slow read first.
    paths = {key: find_idx_file(directory, stem) for key, (stem, _) in IDX_FILES.items()}
    arrays = {key: (paths[key], read_idx(paths[key], IDX_FILES[key][1])) for key in IDX_FILES}
    for part in ("train", "test"):
        (image_path, images), (label_path, labels) = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if len(images) != len(labels):
            raise _bad(label_path, f"has {len(labels)} labels but {image_path.name} has {len(images)} images")
    if arrays["train_images"][1].shape[1:] != arrays["test_images"][1].shape[1:]:
        raise _bad(arrays["test_images"][0], "has a different image size than the training images")
    _check_class_ids(*arrays["train_labels"], *arrays["test_labels"])
    train, validation = split_off_validation(arrays["train_images"][1], arrays["train_labels"][1].astype(np.int64))
    return {
        "train": train,
        "validation": validation,
        "test": (arrays["test_images"][1], arrays["test_labels"][1].astype(np.int64)),
    }


def split_off_validation(
    images: np.ndarray, labels: np.ndarray
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """(train, validation): the validation split is the last sixth of a training set, at most 10,000 images."""
    n_val = min(MAX_VALIDATION, int(len(images) * VALIDATION_FRACTION))
    cut = len(images) - n_val
    return (images[:cut], labels[:cut]), (images[cut:], labels[cut:])


def _check_class_ids(train_path: Path, train: np.ndarray, test_path: Path, test: np.ndarray) -> None:
    """Labels must be class ids 0..K-1, each used in training: a stray value (200 among 0-9) is damage."""
    if len(train) == 0:
        return
    present = np.flatnonzero(np.bincount(train))
    missing = np.setdiff1d(np.arange(present[-1] + 1), present)
    if missing.size:
        stray = int(present[present > missing[0]][0])
        raise _bad(train_path, f"has label {stray} but no label {int(missing[0])}: labels must be class ids "
                               f"0..K-1 with every class present")
    unseen = test[test > present[-1]]
    if unseen.size:
        raise _bad(test_path, f"has label {int(unseen[0])}, a class the training labels (0..{int(present[-1])}) "
                              "never use")


def _bad(path: Path, problem: str) -> UserError:
    return UserError(
        f"IDX file {path} {problem}",
        "replace it with an intact copy (e.g. re-download the dataset) and run the prepare again",
    )


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzipped if the name ends in .gz), e.g. to export a dataset."""
    data = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, UBYTE, data.ndim]) + np.asarray(data.shape, dtype=">u4").tobytes()
    payload = header + data.tobytes()
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)
