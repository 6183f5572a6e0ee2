"""Read SVHN's official cropped-digit files (format 2: train_32x32.mat, test_32x32.mat, extra_32x32.mat).

Each is a MATLAB v5 file with `X`, uint8 of shape 32x32x3xN (height, width, channel, image), and `y`, N x 1
labels 1..10 where 10 stands for the digit 0 (the dataset's documentation). Read with scipy.io.loadmat, which
parses the MATLAB format itself: nothing in the file is ever unpickled or executed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.data.idx import split_off_validation
from pipeline.errors import UserError

SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat", "extra": "extra_32x32.mat"}
SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"
MAT_IMAGE_SHAPE = (32, 32, 3)  # height, width, channel: the .mat layout, before the image axis
IMAGE_SHAPE = (3, 32, 32)  # channel-first, the layout aae.networks' conv encoder reads
ZERO_LABEL = 10  # SVHN writes the digit 0 as label 10


def read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One official .mat file as (uint8 images (N, 3, 32, 32), int64 digits 0..9); a UserError if malformed."""
    from scipy.io import loadmat  # here: scipy is imported only by those who read SVHN

    if not path.is_file():
        raise _bad(path, "is missing")
    try:
        contents = loadmat(path)
    # scipy's MATLAB reader raises many kinds of error on a damaged file (MatReadError, ValueError, TypeError,
    # OSError, NotImplementedError for v7.3 files, ...): every one means "not a readable SVHN file".
    except Exception as err:
        raise _bad(path, f"cannot be read as a MATLAB v5 file ({first_line(err)})") from None
    missing = [key for key in ("X", "y") if key not in contents]
    if missing:
        raise _bad(path, f"has no variable {' or '.join(missing)} (found: {', '.join(_variables(contents)) or 'none'})")
    images, labels = contents["X"], contents["y"]
    if images.ndim != 4 or images.shape[:3] != MAT_IMAGE_SHAPE:
        raise _bad(path, f"holds X of shape {images.shape}; the official layout is 32x32x3xN")
    if images.dtype != np.uint8:
        raise _bad(path, f"holds X as {images.dtype}; the official files store uint8 pixels")
    n = images.shape[3]
    if labels.size != n or labels.ndim > 2 or (labels.ndim == 2 and 1 not in labels.shape):
        raise _bad(path, f"holds y of shape {labels.shape} for {n} images; the official layout is Nx1")
    labels = labels.reshape(-1)
    if not np.issubdtype(labels.dtype, np.integer) and not np.all(np.mod(labels, 1) == 0):
        raise _bad(path, "holds labels that are not whole numbers")
    labels = labels.astype(np.int64)
    outside = labels[(labels < 1) | (labels > ZERO_LABEL)]
    if outside.size:
        raise _bad(path, f"has label {int(outside[0])}; SVHN labels are 1..10 (10 is the digit 0)")
    # (H, W, C, N) -> (N, C, H, W), as torchvision's SVHN does.
    return np.ascontiguousarray(images.transpose(3, 2, 0, 1)), np.where(labels == ZERO_LABEL, 0, labels)


def svhn_files(directory: Path) -> dict[str, Path]:
    """The official files present in `directory`: train and test are required, extra is used when there."""
    directory = directory.expanduser()
    if not directory.is_dir():
        raise UserError(f"SVHN directory {directory} does not exist", "pass svhn:/path/to/an/existing/directory")
    files = {part: directory / name for part, name in SVHN_FILES.items()}
    for part in ("train", "test"):
        if not files[part].is_file():
            raise UserError(f"SVHN file {SVHN_FILES[part]} is missing from {directory}",
                            "put the official train_32x32.mat and test_32x32.mat (extra_32x32.mat optional) there, "
                            f"from {SVHN_URL}")
    return {part: path for part, path in files.items() if path.is_file()}


def read_svhn_files(files: dict[str, Path]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """train / validation / test from the official files. Validation is the tail of train_32x32.mat (as for
    MNIST: a sixth, at most 10,000); the extra set, when given, joins the training split after it."""
    arrays = {part: read_svhn_mat(path) for part, path in files.items()}
    train, validation = split_off_validation(*arrays["train"])
    if "extra" in arrays:
        train = tuple(np.concatenate([a, b]) for a, b in zip(train, arrays["extra"], strict=True))
    return {"train": train, "validation": validation, "test": arrays["test"]}


def _variables(contents: dict[str, object]) -> list[str]:
    return sorted(key for key in contents if not key.startswith("__"))


def _bad(path: Path, problem: str) -> UserError:
    return UserError(
        f"SVHN file {path} {problem}",
        f"replace it with the official copy from {SVHN_URL} (format 2, 32x32) and run the prepare again",
    )


def first_line(err: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:300]}" if lines else type(err).__name__
