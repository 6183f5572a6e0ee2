"""pipeline.data on tiny IDX datasets the tests write themselves: reading, Parquet, integrity, labels, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import pipeline.data as data
from pipeline.cli import app
from pipeline.data import load_label_split, load_split, prepare_dataset
from pipeline.data.idx import read_idx, read_idx_dir, write_idx
from pipeline.data.labels import balanced_subset
from pipeline.errors import UserError

N_TRAIN, N_TEST = 60, 20  # the validation split is the last sixth of train: 10 images, leaving 50


def write_tiny_idx(directory: Path, gz: bool = True, seed: int = 0) -> dict[str, np.ndarray]:
    """Write a four-file IDX dataset (labels cycle 0..9) and return the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(N_TRAIN) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(N_TEST) % 10).astype(np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        write_idx(directory / (f"{stem}.gz" if gz else stem), array)
    return arrays


@pytest.fixture
def idx_dir(tmp_path: Path) -> Path:
    write_tiny_idx(tmp_path / "idx")
    return tmp_path / "idx"


@pytest.fixture
def prepared(tmp_path: Path, idx_dir: Path) -> tuple[str, Path]:
    """A prepared tiny dataset: its name and its data dir."""
    name, data_dir = f"idx:{idx_dir}", tmp_path / "data"
    prepare_dataset(name, data_dir=data_dir)
    return name, data_dir


# --- the IDX reader ---------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [True, False])
def test_idx_reader_returns_the_arrays_written_plain_or_gzipped(tmp_path: Path, gz: bool) -> None:
    written = write_tiny_idx(tmp_path, gz=gz)
    splits = read_idx_dir(tmp_path)
    images = written["train-images-idx3-ubyte"]
    np.testing.assert_array_equal(splits["train"][0], images[:50])
    np.testing.assert_array_equal(splits["validation"][0], images[50:])
    np.testing.assert_array_equal(splits["test"][1], written["t10k-labels-idx1-ubyte"])
    assert splits["train"][1].dtype == np.int64


def test_idx_file_with_wrong_magic_number_is_a_user_error_naming_it(tmp_path: Path) -> None:
    write_tiny_idx(tmp_path, gz=False)
    bad = tmp_path / "train-labels-idx1-ubyte"
    bad.write_bytes(b"\x00\x00\x0d\x01" + bad.read_bytes()[4:])  # 0x0d = float, not unsigned byte
    with pytest.raises(UserError, match="train-labels-idx1-ubyte.*magic"):
        read_idx_dir(tmp_path)


def test_idx_file_shorter_than_its_header_says_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "t10k-images-idx3-ubyte"
    write_idx(path, np.zeros((3, 28, 28), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(UserError, match="t10k-images-idx3-ubyte"):
        read_idx(path, 3)


def test_missing_idx_file_is_a_user_error_naming_it(tmp_path: Path) -> None:
    write_tiny_idx(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte"):
        read_idx_dir(tmp_path)


def test_label_and_image_counts_that_differ_are_a_user_error(tmp_path: Path) -> None:
    write_tiny_idx(tmp_path, gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(N_TRAIN - 1, dtype=np.uint8))
    with pytest.raises(UserError, match="59 labels"):
        read_idx_dir(tmp_path)


# --- prepare and load -------------------------------------------------------------------------------

def test_prepared_parquet_loads_back_identical_arrays(tmp_path: Path, idx_dir: Path) -> None:
    written = read_idx_dir(idx_dir)
    directory = prepare_dataset(f"idx:{idx_dir}", data_dir=tmp_path / "data")
    assert directory.parent == tmp_path / "data" and directory.name.startswith("idx-idx-")
    for split, (images, labels) in written.items():
        loaded_images, loaded_labels = load_split(f"idx:{idx_dir}", split, data_dir=tmp_path / "data")
        assert loaded_images.dtype == np.uint8 and loaded_labels.dtype == np.int64
        np.testing.assert_array_equal(loaded_images, images)
        np.testing.assert_array_equal(loaded_labels, labels)


def test_default_data_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AAE_DATA_DIR", str(tmp_path / "elsewhere"))
    assert data.default_data_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("AAE_DATA_DIR")
    assert data.default_data_dir() == Path.home() / ".cache" / "aae-pipeline" / "data"


def test_preparing_a_valid_dataset_again_does_no_work(prepared, monkeypatch: pytest.MonkeyPatch) -> None:
    name, data_dir = prepared

    def must_not_run(*args, **kwargs):
        raise AssertionError("a valid dataset was rebuilt")

    monkeypatch.setattr(data, "fetch_raw", must_not_run)
    prepare_dataset(name, data_dir=data_dir)


def test_loading_an_unprepared_dataset_says_how_to_prepare_it(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="data prepare mnist"):
        load_split("mnist", "train", data_dir=tmp_path)


def test_unknown_dataset_or_split_is_a_user_error(prepared) -> None:
    with pytest.raises(UserError, match="unknown dataset"):
        prepare_dataset("cifar10")
    with pytest.raises(UserError, match="unknown split"):
        load_split(prepared[0], "valid", data_dir=prepared[1])


# --- integrity --------------------------------------------------------------------------------------

def _train_file(prepared) -> Path:
    name, data_dir = prepared
    return prepare_dataset(name, data_dir=data_dir) / "train.parquet"


def test_corrupted_file_fails_its_checksum_with_a_rebuild_hint(prepared) -> None:
    path = _train_file(prepared)
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # same size, different bytes: only the checksum can tell
    path.write_bytes(bytes(blob))
    with pytest.raises(UserError, match="checksum") as err:
        load_split(*prepared[:1], "train", data_dir=prepared[1])
    assert "--force" in str(err.value)


def test_truncated_file_fails_its_size_check_with_a_rebuild_hint(prepared) -> None:
    path = _train_file(prepared)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(UserError, match="truncated") as err:
        load_split(prepared[0], "train", data_dir=prepared[1])
    assert "--force" in str(err.value)


def test_file_changed_after_a_verified_load_is_checked_again(prepared) -> None:
    name, data_dir = prepared
    load_split(name, "test", data_dir=data_dir)  # verified and cached
    path = _train_file(prepared).with_name("test.parquet")
    blob, stat = bytearray(path.read_bytes()), path.stat()
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))
    # A real edit happens at least a clock tick later; make that explicit so the test cannot race.
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    with pytest.raises(UserError, match="checksum"):
        load_split(name, "test", data_dir=data_dir)


def test_prepare_refuses_a_corrupted_dataset_and_force_rebuilds_it(prepared) -> None:
    path = _train_file(prepared)
    path.write_bytes(b"junk")
    # Not rebuilt silently: the copy may be data the user put there.
    with pytest.raises(UserError, match="train.parquet.*truncated") as err:
        prepare_dataset(prepared[0], data_dir=prepared[1])
    assert "--force" in str(err.value)
    prepare_dataset(prepared[0], data_dir=prepared[1], force=True)
    assert len(load_split(prepared[0], "train", data_dir=prepared[1])[1]) == 50


# --- atomic writes ----------------------------------------------------------------------------------

def _fail_on_second_split(monkeypatch: pytest.MonkeyPatch) -> None:
    real, calls = data.write_split, []

    def write_then_fail(path, images, labels):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the user pressing Ctrl-C halfway through
        return real(path, images, labels)

    monkeypatch.setattr(data, "write_split", write_then_fail)


def test_interrupted_prepare_leaves_nothing_loadable_and_next_prepare_works(
    tmp_path: Path, idx_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, data_dir = f"idx:{idx_dir}", tmp_path / "data"
    _fail_on_second_split(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(name, data_dir=data_dir)
    with pytest.raises(UserError, match="not prepared"):
        load_split(name, "train", data_dir=data_dir)
    assert not list(data_dir.glob(".partial-*"))
    monkeypatch.undo()
    prepare_dataset(name, data_dir=data_dir)
    assert len(load_split(name, "test", data_dir=data_dir)[1]) == N_TEST


def test_failed_forced_rebuild_keeps_the_previous_dataset(prepared, monkeypatch: pytest.MonkeyPatch) -> None:
    name, data_dir = prepared
    _fail_on_second_split(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(name, data_dir=data_dir, force=True)
    assert len(load_split(name, "train", data_dir=data_dir)[1]) == 50


def test_leftovers_of_a_killed_prepare_are_cleared_and_a_manifestless_dataset_is_rebuilt(
    tmp_path: Path, idx_dir: Path
) -> None:
    name, data_dir = f"idx:{idx_dir}", tmp_path / "data"
    final = prepare_dataset(name, data_dir=data_dir)
    (final / "manifest.json").unlink()  # as if killed before the manifest was written
    leftover = data_dir / f".partial-{final.name}-deadbeef"
    leftover.mkdir()
    (leftover / "train.parquet").write_bytes(b"half")
    with pytest.raises(UserError, match="not prepared"):
        load_split(name, "train", data_dir=data_dir)
    prepare_dataset(name, data_dir=data_dir)
    assert not leftover.exists()
    assert len(load_split(name, "train", data_dir=data_dir)[1]) == 50


# --- labelled subsets -------------------------------------------------------------------------------

def test_label_split_is_balanced_and_reproducible(prepared, tmp_path: Path, idx_dir: Path) -> None:
    name, data_dir = prepared
    indices = load_label_split(name, 20, seed=3, data_dir=data_dir)
    labels = load_split(name, "train", data_dir=data_dir)[1]
    assert indices.dtype == np.int64 and len(set(indices.tolist())) == 20
    assert np.bincount(labels[indices], minlength=10).tolist() == [2] * 10
    # Computed afresh in another data dir (not read back), the same seed picks the same examples.
    other = tmp_path / "other"
    prepare_dataset(name, data_dir=other)
    np.testing.assert_array_equal(load_label_split(name, 20, seed=3, data_dir=other), indices)
    assert not np.array_equal(load_label_split(name, 20, seed=4, data_dir=data_dir), indices)


def test_label_count_not_divisible_by_classes_is_as_balanced_as_possible() -> None:
    labels = np.repeat(np.arange(10), 50)
    counts = np.bincount(labels[balanced_subset(labels, 23, seed=0)], minlength=10)
    assert sorted(counts.tolist()) == [2] * 7 + [3] * 3


def test_label_split_is_recorded_in_the_manifest_and_read_back(prepared, monkeypatch) -> None:
    name, data_dir = prepared
    first = load_label_split(name, 10, seed=0, data_dir=data_dir)
    manifest = json.loads((prepare_dataset(name, data_dir=data_dir) / "manifest.json").read_text())
    assert manifest["label_splits"]["labels-10-seed0"]["file"] in manifest["files"]
    monkeypatch.setattr(data, "balanced_subset", lambda *a: pytest.fail("recomputed instead of read back"))
    np.testing.assert_array_equal(load_label_split(name, 10, seed=0, data_dir=data_dir), first)


def test_all_labels_and_impossible_label_counts(prepared) -> None:
    name, data_dir = prepared
    np.testing.assert_array_equal(load_label_split(name, "all", seed=0, data_dir=data_dir), np.arange(50))
    with pytest.raises(UserError, match="has 50"):
        load_label_split(name, 51, seed=0, data_dir=data_dir)
    with pytest.raises(UserError, match="only 2"):
        balanced_subset(np.array([0, 0, 1, 1, 1, 1, 1, 1]), 6, seed=0)
    with pytest.raises(UserError, match="positive"):
        load_label_split(name, 0, seed=0, data_dir=data_dir)


# --- the `data prepare` command ---------------------------------------------------------------------

def test_cli_prepare_prints_rows_and_location(tmp_path: Path, idx_dir: Path) -> None:
    result = CliRunner().invoke(app, ["data", "prepare", f"idx:{idx_dir}", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "train 50, validation 10, test 20 rows" in result.output and str(tmp_path) in result.output


def test_cli_prepare_of_changed_source_files_says_it_kept_the_prepared_copy(tmp_path: Path, idx_dir: Path) -> None:
    args = ["data", "prepare", f"idx:{idx_dir}", "--data-dir", str(tmp_path / "data")]
    assert CliRunner().invoke(app, args).exit_code == 0
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and again.output.startswith("already prepared (checksums verified): ")
    assert "note:" not in again.output
    write_tiny_idx(idx_dir, seed=1)  # other images under the same names
    changed = CliRunner().invoke(app, args)
    assert changed.exit_code == 0, changed.output
    assert (f"train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz in {idx_dir} changed since this copy was made; "
            "the copy was kept as it was") in changed.output
    assert f"aae-pipeline data prepare idx:{idx_dir} --force --data-dir {tmp_path / 'data'}" in changed.output
    assert not np.array_equal(load_split(f"idx:{idx_dir}", "train", tmp_path / "data")[0],
                              read_idx_dir(idx_dir)["train"][0])  # indeed the old copy


@pytest.mark.parametrize("source", ["cifar10", "idx:/no/such/dir", "BAD_IDX"])
def test_cli_user_error_is_one_line_and_exit_code_2(tmp_path: Path, source: str) -> None:
    if source == "BAD_IDX":
        write_tiny_idx(tmp_path / "bad")
        (tmp_path / "bad" / "train-images-idx3-ubyte.gz").write_bytes(b"\x00\x00\x08\x09 not idx")
        source = f"idx:{tmp_path / 'bad'}"
    command = [sys.executable, "-m", "pipeline.cli", "data", "prepare", source, "--data-dir", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr + done.stdout
