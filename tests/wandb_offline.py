"""Read an offline W&B run (`offline-run-*/run-<id>.wandb`) back, so tests can check what tracking wrote.

wandb 0.31 ships no Python reader for this file (its internals moved to a Go core), but the format is small:
a 7-byte file header (":W&B", magic 0xBEE1, version 0), then a LevelDB-style log cut into 32 KiB blocks
(counted from the start of the file). Each chunk has a 7-byte header: crc32 (IEEE, seeded with the chunk
type), payload length, and type full / first / middle / last; a block's tail shorter than a header is
zero padding. The joined payloads are `wandb.proto.wandb_internal_pb2.Record` messages.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

FILE_HEADER = struct.Struct("<4sHB")
CHUNK_HEADER = struct.Struct("<IHB")
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


@dataclass
class OfflineRun:
    """What one offline run recorded, decoded into plain Python values."""

    path: Path
    run: dict[str, Any] = field(default_factory=dict)  # id, group, job_type, project, display_name
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    # ArtifactRecords: outputs, and inputs logged with use_after_commit (how an offline run declares a use)
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    used_artifacts: list[dict[str, Any]] = field(default_factory=list)  # UseArtifactRecords, if any
    files: list[str] = field(default_factory=list)  # paths the run asked to save (e.g. media/images/...)

    @property
    def files_dir(self) -> Path:
        return self.path.parent / "files"


def read_records(path: Path) -> list[pb.Record]:
    """Every Record in a .wandb file, in order; a bad checksum or a torn chunk raises ValueError."""
    data = Path(path).read_bytes()
    ident, magic, version = FILE_HEADER.unpack_from(data, 0)
    if (ident, magic, version) != (b":W&B", 0xBEE1, 0):
        raise ValueError(f"{path} is not a W&B transaction log")
    records, pending, offset = [], b"", FILE_HEADER.size
    while offset + CHUNK_HEADER.size <= len(data):
        left_in_block = BLOCK - offset % BLOCK
        if left_in_block < CHUNK_HEADER.size:  # the writer pads a block's tail that cannot hold a header
            offset += left_in_block
            continue
        crc, length, kind = CHUNK_HEADER.unpack_from(data, offset)
        payload = data[offset + CHUNK_HEADER.size : offset + CHUNK_HEADER.size + length]
        if kind == 0 and length == 0:  # zeros: a preallocated or unfinished tail
            break
        if len(payload) != length or zlib.crc32(payload, zlib.crc32(bytes([kind]))) != crc:
            raise ValueError(f"{path}: bad chunk at byte {offset}")
        offset += CHUNK_HEADER.size + length
        pending = payload if kind in (FULL, FIRST) else pending + payload
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def read_offline_run(run_dir: Path, timeout_s: float = 20.0) -> OfflineRun:
    """Decode an `offline-run-*` directory: run info, config, history rows, summary, artifacts and files.

    wandb's service may still be flushing the file just after `finish()` returns, so this waits (up to
    timeout_s) for the closing exit record; a run that was killed never writes one and is read as it is."""
    run_dir = Path(run_dir)
    (log,) = run_dir.glob("run-*.wandb")
    out = OfflineRun(path=log)
    deadline = time.monotonic() + timeout_s
    records = _complete_records(log)
    while (not records or records[-1].WhichOneof("record_type") != "exit") and time.monotonic() < deadline:
        time.sleep(0.1)
        records = _complete_records(log)
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out.run = _run_info(record.run)
            _update(out.config, record.run.config.update)
        elif kind == "config":
            _update(out.config, record.config.update)
        elif kind == "history":
            out.history.append({_key(item): json.loads(item.value_json) for item in record.history.item})
        elif kind == "summary":
            _update(out.summary, record.summary.update)
        elif kind == "artifact":
            out.artifacts.append(_artifact(record.artifact))
        elif kind == "use_artifact":
            out.used_artifacts.append({"name": record.use_artifact.name, "type": record.use_artifact.type})
        elif kind == "files":
            out.files.extend(item.path for item in record.files.files)
    return out


def _complete_records(log: Path) -> list[pb.Record]:
    try:
        return read_records(log)
    except (ValueError, struct.error):  # a chunk still being written
        return []


def find_offline_runs(wandb_dir: Path) -> dict[str, OfflineRun]:
    """Every offline run under a `wandb/` directory, keyed by run id (a resumed id keeps its last directory)."""
    runs = {}
    for run_dir in sorted(Path(wandb_dir).glob("offline-run-*")):
        run = read_offline_run(run_dir)
        runs[run.run["id"]] = run
    return runs


def _run_info(run: pb.RunRecord) -> dict[str, Any]:
    return {
        "id": run.run_id,
        "group": run.run_group,
        "job_type": run.job_type,
        "project": run.project,
        "display_name": run.display_name,
    }


def _key(item: Any) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


def _update(target: dict[str, Any], items: Any) -> None:
    for item in items:
        target[_key(item)] = json.loads(item.value_json)


def _artifact(artifact: pb.ArtifactRecord) -> dict[str, Any]:
    return {
        "name": artifact.name,
        "type": artifact.type,
        "aliases": list(artifact.aliases),
        "metadata": json.loads(artifact.metadata) if artifact.metadata else {},
        "files": sorted(entry.path for entry in artifact.manifest.contents),
        "staged": sorted(entry.local_path for entry in artifact.manifest.contents),  # copies awaiting `wandb sync`
        "user_created": artifact.user_created,
        "use_after_commit": artifact.use_after_commit,
        "digest": artifact.digest,
    }
