"""Issue #11, data and config side: bad labels, silent corruption, OS errors and odd files are one line, exit 2."""

from __future__ import annotations

import errno
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pipeline.data as data
from pipeline.config import config_to_yaml, load_config
from pipeline.data import load_label_split, load_split, prepare_dataset
from pipeline.data.idx import read_idx, read_idx_dir
from pipeline.data.labels import balanced_subset
from pipeline.data.splits import load_training_data
from pipeline.errors import UserError
from pipeline.rundir import RunDir
from pipeline.stages.prepare import prepare
from tests.conftest import tiny_overrides
from tests.helpers import run_cli
from tests.synthetic import LABEL_MAGIC, write_idx, write_synthetic_idx_dir


def assert_one_line_exit_2(result, *named: str) -> None:
    """The project's rule for bad input: exit 2, one `error:` line naming the problem, no traceback."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for text in named:
        assert text in lines[0], lines[0]


@pytest.fixture
def own_dataset(tmp_path: Path) -> tuple[str, Path]:
    """A prepared synthetic dataset this test may damage: its name and its data dir."""
    idx_dir = write_synthetic_idx_dir(tmp_path / "idx")
    name, data_dir = f"idx:{idx_dir}", tmp_path / "data"
    prepare_dataset(name, data_dir=data_dir)
    return name, data_dir


def snapshot(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


# --- 1. data.labels -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_zero_labels_with_a_limit_is_one_line_before_anything_is_written(synthetic_dataset, tmp_path) -> None:
    overrides = tiny_overrides(synthetic_dataset, "data.labels=0", "data.limit=1000")
    result = run_cli("run", "semisup", *[arg for o in overrides for arg in ("--set", o)], cwd=tmp_path)
    assert_one_line_exit_2(result, "data.labels", "positive whole number")
    assert list(tmp_path.iterdir()) == []  # no run dir, nothing else


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["data.labels=-10", "data.limit=1000"], "positive whole number"),
        (["data.labels=true"], "positive whole number"),
        (["data.labels=7"], "one per class"),  # MNIST has 10 classes: 7 labels would leave 3 unlabelled
        (["data.labels=7", "data.limit=1000"], "one per class"),
    ],
)
def test_impossible_label_counts_are_refused_by_the_config(overrides: list[str], named: str) -> None:
    with pytest.raises(UserError, match=named) as caught:
        load_config("semisup", overrides)
    assert "data.labels" in caught.value.one_line()


@pytest.mark.parametrize("limit", [None, 500])
def test_fewer_labels_than_idx_classes_is_refused_when_the_data_is_loaded(synthetic_dataset, limit, tmp_path) -> None:
    extra = ["data.labels=7"] + ([f"data.limit={limit}"] if limit else [])
    config = load_config("semisup", tiny_overrides(synthetic_dataset, *extra))  # idx: classes not known yet
    with pytest.raises(UserError, match="10 classes: a balanced subset needs at least one per class"):
        prepare(config, RunDir(tmp_path))


def test_a_limit_draws_labels_by_the_same_rules_as_the_prepared_split(synthetic_dataset) -> None:
    whole = load_config("semisup", tiny_overrides(synthetic_dataset, "data.labels=100"))
    # The synthetic train split has 1000 rows: a limit of 1000 changes nothing, so neither may the labels.
    limited = load_config("semisup", tiny_overrides(synthetic_dataset, "data.labels=100", "data.limit=1000"))
    expected = load_training_data(whole).labelled
    assert load_training_data(limited).labelled.tolist() == expected.tolist()
    small = load_training_data(load_config("semisup", tiny_overrides(
        synthetic_dataset, "data.labels=100", "data.limit=600")))
    assert small.labelled.tolist() == balanced_subset(small.y.numpy(), 100, 0).tolist()


# --- 2. corruption that keeps size and mtime ----------------------------------------------------------

def corrupt_in_place(path: Path) -> None:
    """Flip one byte in the middle, keeping the file's size, inode and mtime: only a checksum can tell."""
    stat = path.stat()
    with path.open("r+b") as handle:
        handle.seek(stat.st_size // 2)
        byte = handle.read(1)
        handle.seek(stat.st_size // 2)
        handle.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns, path.stat().st_ino) == (
        stat.st_size, stat.st_mtime_ns, stat.st_ino)


def test_data_prepare_finds_silent_corruption_and_does_not_rebuild_it(own_dataset, tmp_path) -> None:
    name, data_dir = own_dataset
    for split in ("train", "validation", "test"):
        load_split(name, split, data_dir=data_dir)  # verified: the checksum cache now knows every file
    train = prepare_dataset(name, data_dir=data_dir) / "train.parquet"
    corrupt_in_place(train)
    damaged = train.read_bytes()
    result = run_cli("data", "prepare", name, "--data-dir", str(data_dir), cwd=tmp_path)
    assert_one_line_exit_2(result, str(train), "checksum", "--force")
    assert train.read_bytes() == damaged  # reported, not silently replaced


def test_the_run_prepare_stage_finds_silent_corruption(own_dataset, tmp_path) -> None:
    name, data_dir = own_dataset
    load_split(name, "train", data_dir=data_dir)  # cached in this process too
    corrupt_in_place(prepare_dataset(name, data_dir=data_dir) / "train.parquet")
    config = load_config("semisup", [f"data.dataset={name}", f"data.data_dir={data_dir}", "data.labels=all"])
    with pytest.raises(UserError, match="train.parquet does not match its checksum"):
        prepare(config, RunDir(tmp_path))


# --- 3. OS errors while preparing, odd config files ---------------------------------------------------

@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash for ulimit")
def test_disk_full_during_a_forced_prepare_is_one_line_and_keeps_the_old_copy(own_dataset, tmp_path) -> None:
    name, data_dir = own_dataset
    final = prepare_dataset(name, data_dir=data_dir)
    before = snapshot(final)
    # ulimit -f makes a write fail with EFBIG partway through, as a full disk does with ENOSPC; Python
    # ignores the SIGXFSZ that comes with it, so the write just raises.
    cli = shlex.join([sys.executable, "-m", "pipeline.cli", "data", "prepare", name, "--data-dir", str(data_dir)])
    command = f"ulimit -f 200; exec {cli} --force"
    result = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert_one_line_exit_2(result, "disk space", str(final), "--data-dir")
    assert not list(data_dir.glob(".partial-*")) and not list(data_dir.glob(".old-*"))
    assert snapshot(final) == before
    assert len(load_split(name, "train", data_dir=data_dir)[1]) == 1000


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write to a read-only directory")
def test_forced_prepare_into_a_read_only_data_dir_is_one_line(own_dataset, tmp_path) -> None:
    name, data_dir = own_dataset
    before = snapshot(prepare_dataset(name, data_dir=data_dir))
    data_dir.chmod(0o555)
    try:
        result = run_cli("data", "prepare", name, "--data-dir", str(data_dir), "--force", cwd=tmp_path)
    finally:
        data_dir.chmod(0o755)
    assert_one_line_exit_2(result, str(data_dir), "Permission denied", "writable --data-dir")
    assert snapshot(prepare_dataset(name, data_dir=data_dir)) == before


@pytest.mark.parametrize(
    ("code", "named"),
    [(errno.EACCES, "cannot write to the data directory"), (errno.ENOSPC, "ran out of disk space")],
)
def test_os_error_while_writing_a_split_is_a_user_error_and_cleans_up(
    own_dataset, monkeypatch: pytest.MonkeyPatch, code: int, named: str
) -> None:
    name, data_dir = own_dataset  # also runs as root, where the read-only test above is skipped
    final = prepare_dataset(name, data_dir=data_dir)
    before = snapshot(final)
    real = data.write_split

    def fail_on_validation(path: Path, images: np.ndarray, labels: np.ndarray) -> dict:
        if path.name == "validation.parquet":
            raise OSError(code, os.strerror(code), str(path))
        return real(path, images, labels)

    monkeypatch.setattr(data, "write_split", fail_on_validation)
    with pytest.raises(UserError, match=named) as caught:
        prepare_dataset(name, data_dir=data_dir, force=True)
    assert os.strerror(code) in str(caught.value) and str(data_dir) in str(caught.value)
    assert not list(data_dir.glob(".partial-*"))
    assert snapshot(final) == before


@pytest.mark.slow
def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path) -> None:
    (tmp_path / "b.yaml").write_bytes(b"\x00\xff")
    result = run_cli("run", "b.yaml", cwd=tmp_path)
    assert_one_line_exit_2(result, "b.yaml", "UTF-8")


# --- 4. empty config files, IDX labels and short IDX files -------------------------------------------

@pytest.mark.parametrize("content", ["", "train:\n  epochs: 3\n"])
@pytest.mark.slow
def test_a_config_file_that_names_no_model_is_refused(tmp_path, content: str) -> None:
    (tmp_path / "empty.yaml").write_text(content)
    # The --set keeps an old build that accepts the file from reaching for real MNIST data.
    result = run_cli("run", "empty.yaml", "--set", f"data.dataset=idx:{tmp_path / 'none'}", cwd=tmp_path,
                     env={"AAE_DATA_DIR": str(tmp_path / "data")})
    assert_one_line_exit_2(result, "empty.yaml", "model.variant")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.yaml"]
    # Full configs (a run dir's config.yaml, a sweep's best.yaml) still load.
    (tmp_path / "config.yaml").write_text(config_to_yaml(load_config("unsup-gaussian")))
    assert load_config(str(tmp_path / "config.yaml")).model.variant == load_config("unsup-gaussian").model.variant


def _labels_file(idx_dir: Path, prefix: str) -> Path:
    return idx_dir / f"{prefix}-labels-idx1-ubyte.gz"


def _rewrite_labels(path: Path, change: dict[int, int]) -> None:
    labels = read_idx(path, 1)
    for index, value in change.items():
        labels[index] = value
    write_idx(path, labels, LABEL_MAGIC)


def test_an_idx_label_outside_the_class_ids_is_refused_naming_file_and_value(tmp_path) -> None:
    idx_dir = write_synthetic_idx_dir(tmp_path / "idx", n_train=120, n_test=30)
    _rewrite_labels(_labels_file(idx_dir, "train"), {5: 200})
    with pytest.raises(UserError, match=r"train-labels-idx1-ubyte.gz has label 200 but no label 10"):
        read_idx_dir(idx_dir)


def test_an_idx_test_label_no_training_example_has_is_refused(tmp_path) -> None:
    idx_dir = write_synthetic_idx_dir(tmp_path / "idx", n_train=120, n_test=30)
    _rewrite_labels(_labels_file(idx_dir, "t10k"), {3: 12})
    with pytest.raises(UserError, match=r"t10k-labels-idx1-ubyte.gz has label 12"):
        read_idx_dir(idx_dir)


def test_a_too_short_idx_file_says_so_with_its_size(tmp_path) -> None:
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(b"\x00\x00")
    with pytest.raises(UserError, match=r"is too short to be an IDX file \(2 bytes\)"):
        read_idx(path, 1)


def test_a_recorded_label_split_below_the_class_count_is_refused(own_dataset) -> None:
    name, data_dir = own_dataset
    # As an older version would have recorded it: 7 labels over 10 classes, read back without balanced_subset.
    final = prepare_dataset(name, data_dir=data_dir)
    manifest = json.loads((final / "manifest.json").read_text())
    np.save(final / "labels-7-seed0.npy", np.arange(7, dtype=np.int64))
    manifest["files"]["labels-7-seed0.npy"] = data.file_record(final / "labels-7-seed0.npy")
    manifest["label_splits"]["labels-7-seed0"] = {"file": "labels-7-seed0.npy", "n_labels": 7, "seed": 0}
    data.write_json_atomic(final / "manifest.json", manifest)
    with pytest.raises(UserError, match="at least one per class"):
        load_label_split(name, 7, seed=0, data_dir=data_dir)
