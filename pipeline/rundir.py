"""The run directory: everything one run produced, with manifest.json as its durable record."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from pipeline.errors import UserError

try:  # POSIX; elsewhere two processes on one run directory are not detected
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

MANIFEST = "manifest.json"
CONFIG_FILE = "config.yaml"
METRICS = "metrics.jsonl"
DIVERGED = "diverged"  # key of the metrics row written when non-finite losses stopped training
PROGRESS = "progress.json"  # rank 0's step within the current epoch, rewritten every few seconds
LOCK_FILE = ".driver.lock"  # held (flock) by the process driving the run; the kernel drops it when that dies


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


# mkstemp makes its files private (0600); a finished file gets the permissions any new file would.
FILE_MODE = 0o666 & ~_umask()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so that readers see the old content or the new, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Text flavour of atomic_write_bytes."""
    atomic_write_bytes(path, text.encode())


def sha256_file(*paths: Path) -> str:
    """The sha256 of a file (of several, their bytes one after another), read in chunks so big files do not
    need to fit in memory."""
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):  # noqa: B023 (called within the iteration)
                digest.update(chunk)
    return digest.hexdigest()


def new_run_dir(experiment: str, root: Path = Path("runs")) -> Path:
    """The path of a fresh `runs/<experiment>-<timestamp>` that does not exist yet.

    Not created here: a run that fails its checks before starting leaves nothing behind. `claim_dir`
    creates it when the run starts, moving on to a suffixed name if another run took this one meanwhile."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return _free_name(root.resolve() / f"{Path(experiment).stem}-{stamp}")


def _free_name(path: Path) -> Path:
    candidate, suffix = path, 1
    while candidate.exists():
        suffix += 1
        candidate = path.with_name(f"{path.name}-{suffix}")
    return candidate


def claim_dir(path: Path) -> Path:
    """Create a directory that no other process has, starting from `path` (`-2`, `-3`… if it is taken).

    mkdir is atomic: of two runs started in the same second, one gets the name and the other the next."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        candidate = _free_name(path)
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue


class RunDir:
    """Reads and updates one run directory; only the driver process writes the manifest.

    `fresh` marks a directory named for a new run and not created yet (see `claim_dir`)."""

    def __init__(self, path: Path, fresh: bool = False) -> None:
        self.path = Path(path).resolve()
        self.fresh = fresh

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def best_checkpoint(self) -> Path:
        """The best epoch's weights (by validation metric): what evaluate, visualize and track read."""
        return self.checkpoint_dir / "best.pt"

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    @property
    def progress_path(self) -> Path:
        return self.path / PROGRESS

    def read_manifest(self) -> dict[str, Any]:
        """The manifest, or an empty skeleton for a new run; a corrupt manifest is a user-facing error."""
        if not self.manifest_path.exists():
            return {"experiment": None, "config": None, "stages": {}, "metrics": {}}
        try:
            return json.loads(self.manifest_path.read_text())
        except json.JSONDecodeError:
            raise UserError(
                f"{self.manifest_path} is not valid JSON", "delete the run directory and run again"
            ) from None

    def update_manifest(self, **fields: Any) -> dict[str, Any]:
        """Merge top-level fields (dicts are merged one level deep) and rewrite the manifest atomically."""
        manifest = self.read_manifest()
        for key, value in fields.items():
            if isinstance(value, dict) and isinstance(manifest.get(key), dict):
                manifest[key].update(value)
            else:
                manifest[key] = value
        atomic_write_text(self.manifest_path, json.dumps(manifest, indent=2, sort_keys=False) + "\n")
        return manifest

    def record_stage(self, stage: str, **info: Any) -> None:
        """Record a stage's status, seconds and outputs under manifest['stages'][stage]."""
        stages = self.read_manifest().get("stages", {})
        stages[stage] = {**stages.get(stage, {}), **info}
        self.update_manifest(stages=stages)

    @contextmanager
    def stage(self, name: str, input_hash: str | None = None) -> Iterator[dict[str, Any]]:
        """Time a stage and record it as running → done / failed; the yielded dict collects its outputs."""
        outputs: dict[str, Any] = {}
        start = time.perf_counter()
        self.record_stage(name, status="running", input_hash=input_hash)
        try:
            yield outputs
        except KeyboardInterrupt:
            self.record_stage(name, status="interrupted", seconds=round(time.perf_counter() - start, 2))
            raise
        except BaseException as err:
            self.record_stage(
                name, status="failed", seconds=round(time.perf_counter() - start, 2), error=str(err)[:500]
            )
            raise
        self.record_stage(
            name, status="done", seconds=round(time.perf_counter() - start, 2), outputs=outputs, error=None
        )

    def archive_training(self) -> Path | None:
        """Move checkpoints and per-epoch metrics into previous-<time>/ so training starts afresh, losing nothing."""
        produced = [self.checkpoint_dir, self.metrics_path]
        if not any(path.exists() for path in produced):
            return None
        archive = self.path / f"previous-{datetime.now().strftime('%Y%m%d-%H%M%S-%f')}"
        archive.mkdir()
        for path in produced:
            if path.exists():
                path.rename(archive / path.name)
        return archive

    def read_metrics(self) -> list[dict[str, Any]]:
        """The per-epoch metric rows training wrote, oldest first (a divergence mark is not an epoch)."""
        return [row for row in self.metric_rows() if DIVERGED not in row]

    def divergence(self) -> dict[str, Any] | None:
        """The row that stopped training on non-finite losses ({"diverged": epoch, "losses": {...}}), if the
        last training attempt ended that way; None otherwise (a resumed run that went on has epoch rows after)."""
        rows = self.metric_rows()
        return rows[-1] if rows and DIVERGED in rows[-1] else None

    def metric_rows(self) -> list[dict[str, Any]]:
        """Every row of metrics.jsonl, divergence marks included."""
        # metrics.jsonl is training's one channel back to the driver: an epoch row per finished epoch, and
        # a divergence row when non-finite losses stopped it. JSON lines; a torn last line is ignored.
        if not self.metrics_path.exists():
            return []
        rows = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return rows


@contextmanager
def driving(run: RunDir) -> Iterator[RunDir]:
    """Hold the run directory for this process: create (claim) it if it is new, refuse it if another live process
    drives it, and mark stages that a dead process left "running" as interrupted. Yields the run directory."""
    if run.fresh:
        run = RunDir(claim_dir(run.path))
    else:
        run.path.mkdir(parents=True, exist_ok=True)
    with holding(run.path, "wait for it to finish, or give this run its own --run-dir"):
        mark_dead_stages(run)
        yield run


@contextmanager
def holding(directory: Path, fix: str) -> Iterator[None]:
    """Hold an existing directory for this process (a run's or a sweep's) while the block runs; a directory a live
    process holds is refused in one line ending with `fix`. The kernel drops the lock of a process that dies, so
    a killed driver never leaves its directory locked."""
    with (directory / LOCK_FILE).open("a+") as lock:
        if fcntl is not None:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.seek(0)
                holder = lock.read().strip() or "another process"
                raise UserError(
                    f"{directory} is in use by another aae-pipeline process ({holder})",
                    fix,
                ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        lock.flush()
        yield


def holder(directory: Path) -> str | None:
    """Who holds the directory (e.g. "pid 4242 on host") if a live process does, without taking it; else None."""
    path = directory / LOCK_FILE
    if fcntl is None or not path.exists():
        return None
    with path.open("r") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return lock.read().strip() or "another process"
    return None


def mark_dead_stages(run: RunDir) -> list[str]:
    """Stages the manifest says are running although no process holds the run (its driver was killed)."""
    if not run.manifest_path.exists():
        return []
    stages = run.read_manifest().get("stages", {})
    dead = [name for name, record in stages.items() if record.get("status") == "running"]
    for name in dead:
        run.record_stage(name, status="interrupted", error="the process running it stopped without finishing")
    return dead

