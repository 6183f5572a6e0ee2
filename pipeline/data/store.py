"""Prepared datasets on disk: one Parquet file per split, a manifest written last, checksums checked on load."""

from __future__ import annotations

import contextlib
import json
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import UserError
from pipeline.rundir import atomic_write_text, sha256_file

try:  # POSIX only; elsewhere concurrent prepares of one dataset are simply not serialised
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
VERIFIED = ".verified.json"  # checksum results keyed by (size, mtime, inode); never trusted for sizes
SPLITS = ("train", "validation", "test")

# Checksums already confirmed in this process: path -> (size, mtime_ns, inode, sha256).
_verified: dict[str, tuple[int, int, int, str]] = {}


def write_split(path: Path, images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Write one split as Parquet (images as fixed-size binary, the fastest layout to load) and describe it.

    `images` is (N, H, W) for grey images or (N, C, H, W) for colour ones; each row holds one image's bytes."""
    n, size = len(images), int(np.prod(images.shape[1:]))
    pixels = pa.py_buffer(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
    column = pa.FixedSizeBinaryArray.from_buffers(pa.binary(size), n, [None, pixels])
    table = pa.table({"image": column, "label": pa.array(labels, type=pa.int64())})
    # zstd: a third the size of snappy here and faster to decode; dictionaries would only bloat the pixels.
    pq.write_table(table, path, compression="zstd", use_dictionary=["label"])
    counts = np.bincount(labels) if n else np.zeros(0, dtype=np.int64)
    return {"file": path.name, "rows": int(n), "label_counts": {str(c): int(k) for c, k in enumerate(counts) if k}}


def read_split(path: Path, shape: tuple[int, ...], rows: int, rebuild: str) -> tuple[np.ndarray, np.ndarray]:
    """Load one split's Parquet file into (uint8 images (N, *shape), int64 labels (N,)); shape is the manifest's
    image_shape: (H, W) grey or (C, H, W) colour."""
    try:
        # ParquetFile, not pq.read_table: the latter imports pyarrow.dataset, ~0.5 s on a first load.
        with pq.ParquetFile(path) as parquet:
            table = parquet.read()
    except (OSError, pa.ArrowException) as err:
        raise UserError(f"{path} cannot be read ({err})", rebuild) from None
    if table.num_rows != rows:
        raise UserError(f"{path} has {table.num_rows} rows, its manifest says {rows}", rebuild)
    labels = table.column("label").to_numpy().astype(np.int64, copy=False)
    size = int(np.prod(shape))
    if rows == 0:
        return np.zeros((0, *shape), dtype=np.uint8), labels
    column = table.column("image").combine_chunks()
    # Read the pixel buffer directly: one copy, no per-row Python objects.
    flat = np.frombuffer(column.buffers()[1], dtype=np.uint8, count=rows * size, offset=column.offset * size)
    return flat.reshape(rows, *shape).copy(), labels


def file_record(path: Path) -> dict[str, Any]:
    """Size and sha256 of a file, as the manifest lists them."""
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON (sorted keys) so that readers see the old file or the new one, never half of one."""
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def read_dataset_manifest(directory: Path, rebuild: str) -> dict[str, Any] | None:
    """The dataset's manifest, or None when there is none (a dataset without one is not prepared)."""
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise UserError(f"{path} is damaged ({err})", rebuild) from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{directory} was prepared in another format version", rebuild)
    return manifest


def verify_files(
    directory: Path, manifest: dict[str, Any], names: list[str], rebuild: str, full: bool = False
) -> None:
    """Check sizes always, checksums unless this file (size, mtime, inode) was checked before or `full` is set."""
    for name in names:
        expected = manifest["files"].get(name)
        path = directory / name
        try:
            stat = path.stat()
        except OSError:
            raise UserError(f"{path} is missing", rebuild) from None
        if expected is None or stat.st_size != expected["bytes"]:
            raise UserError(f"{path} has {stat.st_size} bytes, its manifest says {expected and expected['bytes']}"
                            " (truncated or replaced)", rebuild)
        key = (stat.st_size, stat.st_mtime_ns, stat.st_ino, expected["sha256"])
        if not full and (_verified.get(str(path)) == key or _disk_cache(directory).get(name) == list(key)):
            _verified[str(path)] = key
            continue
        if sha256_file(path) != expected["sha256"]:
            raise UserError(f"{path} does not match its checksum (corrupted)", rebuild)
        _verified[str(path)] = key
        _remember(directory, name, key)


def _disk_cache(directory: Path) -> dict[str, Any]:
    try:
        cache = json.loads((directory / VERIFIED).read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def _remember(directory: Path, name: str, key: tuple[int, int, int, str]) -> None:
    # Best effort: a read-only data dir still loads, it just hashes again in each new process.
    with contextlib.suppress(OSError):
        write_json_atomic(directory / VERIFIED, {**_disk_cache(directory), name: list(key)})


@contextlib.contextmanager
def dataset_lock(data_dir: Path, dir_name: str) -> Iterator[None]:
    """Hold an exclusive lock on one dataset, so concurrent prepares (e.g. Ray workers) build it once."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    with (data_dir / f".{dir_name}.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def remove_leftovers(data_dir: Path, dir_name: str) -> None:
    """Delete temp dirs an interrupted prepare left behind; call only while holding the dataset's lock."""
    for pattern in (f".partial-{dir_name}-*", f".old-{dir_name}-*"):
        for leftover in data_dir.glob(pattern):
            shutil.rmtree(leftover, ignore_errors=True)


def build_atomically(final: Path, build: Callable[[Path], None]) -> None:
    """Run `build` into a temp dir beside `final`, then swap it into place; on failure nothing changes."""
    tmp = final.with_name(f".partial-{final.name}-{uuid.uuid4().hex}")
    tmp.mkdir()  # not tempfile.mkdtemp: its 0700 mode would make a shared data dir unreadable to others
    try:
        build(tmp)
        old = final.with_name(f".old-{final.name}-{uuid.uuid4().hex}")
        if final.exists():
            final.rename(old)
        try:
            tmp.rename(final)
        except OSError:
            if old.exists():
                old.rename(final)
            raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
