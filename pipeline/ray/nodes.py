"""Where a run's pieces ran on a Ray cluster, and whether every node sees the run directory.

Workers and stage tasks read and write the run directory by path, so on a cluster of several machines the
directory must be on storage that every node mounts at the same path. That is checked before anything runs
there: one tiny task per node reads a token the driver wrote.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
from pathlib import Path
from typing import Any

from pipeline.errors import UserError
from pipeline.rundir import RunDir, atomic_write_text

WORKERS_DIR = "ray/workers"  # one record per training rank: where it ran, how many times it started
_SHARED_CHECK_FILE = "ray/shared-check.txt"
_CHECK_TIMEOUT_S = 60.0


def this_node() -> dict[str, str]:
    """The host, and under Ray the node's id and IP, of the calling process."""
    where = {"host": socket.gethostname()}
    try:
        import ray

        if ray.is_initialized():
            where.update(node_id=ray.get_runtime_context().get_node_id(), node_ip=ray.util.get_node_ip_address())
    except Exception:  # noqa: BLE001 -- a record of where something ran must never fail the run
        pass
    return where


def record_worker(run: RunDir, rank: int) -> None:
    """Note where training rank `rank` runs; a restarted worker group adds to `starts`."""
    path = run.path / WORKERS_DIR / f"rank-{rank}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    starts = 0
    with contextlib.suppress(OSError, ValueError):  # a first start, or an unreadable earlier record
        starts = int(json.loads(path.read_text()).get("starts", 0))
    atomic_write_text(path, json.dumps({"rank": rank, **this_node(), "pid": os.getpid(), "starts": starts + 1}))


def worker_records(run: RunDir) -> list[dict[str, Any]]:
    """Every rank's record, by rank (for the manifest's train stage)."""
    records = []
    for path in (run.path / WORKERS_DIR).glob("rank-*.json"):  # sorted below by rank, not by name (rank-10)
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(records, key=lambda record: record.get("rank", 0))


def clear_worker_records(run: RunDir) -> None:
    """Forget where an earlier training of this run directory ran (a fresh train stage starts counting)."""
    for path in (run.path / WORKERS_DIR).glob("rank-*.json"):
        path.unlink(missing_ok=True)


def check_shared(directory: Path, what: str = "run directory") -> None:
    """Refuse a cluster where some node cannot see `directory` (a run's or a sweep's) at the same path.

    Call with Ray connected and the directory created. Runs nothing where the driver's node is the only one."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # Only nodes that can run a worker or a stage task matter: a head without CPUs (the compose cluster's)
    # holds neither.
    nodes = [node for node in ray.nodes() if node.get("Alive")
             and (node.get("Resources", {}).get("CPU", 0) > 0 or node.get("Resources", {}).get("GPU", 0) > 0)]
    if all(node["NodeID"] == ray.get_runtime_context().get_node_id() for node in nodes):
        return  # everything runs beside the driver
    token = secrets.token_hex(8)
    directory = directory.resolve()
    marker = directory / _SHARED_CHECK_FILE
    marker.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(marker, token)
    probe = ray.remote(num_cpus=0, max_retries=0)(_reads_token)
    pending = {
        probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(
            str(marker), token): node
        for node in nodes
    }
    blind, silent = [], []
    try:
        ready, not_ready = ray.wait(list(pending), num_returns=len(pending), timeout=_CHECK_TIMEOUT_S)
        for ref in ready:
            if not ray.get(ref):
                blind.append(pending[ref])
        silent = [pending[ref] for ref in not_ready]
        for ref in not_ready:
            ray.cancel(ref, force=True)
    finally:
        marker.unlink(missing_ok=True)
    if blind:
        raise UserError(
            f"{_describe(blind)} of the Ray cluster cannot see the {what} {directory}",
            f"put the {what} on storage every node mounts at the same path (NFS, or the compose cluster's "
            "/shared volume) and pass it as an absolute --run-dir (tune: --sweep-dir)",
        )
    if silent:
        raise UserError(
            f"{_describe(silent)} of the Ray cluster did not answer within {_CHECK_TIMEOUT_S:g} s",
            "check `ray status` on the head: remove or restart the unresponsive node",
        )


def _reads_token(path: str, token: str) -> bool:
    try:
        return Path(path).read_text() == token
    except OSError:
        return False


def _describe(nodes: list[dict[str, Any]]) -> str:
    names = ", ".join(f"{node.get('NodeManagerAddress', '?')} (node {str(node.get('NodeID', '?'))[:8]})"
                      for node in nodes)
    return f"node{'s' if len(nodes) > 1 else ''} {names}"
