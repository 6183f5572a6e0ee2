"""Helpers the test files share (run directories made in-process, without Ray)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.chain import run_key
from pipeline.config import config_to_yaml, load_config
from pipeline.loop import WorkerContext, train_loop
from pipeline.rundir import CONFIG_FILE, RunDir, atomic_write_text
from tests.conftest import tiny_overrides

EVALUATE_FAST = ("evaluate.parzen_samples=200", "evaluate.parzen_validation=100", "tracking.wandb=disabled")


def trained_run(dataset: dict[str, str], path: Path, experiment: str, *extra: str, evaluated: bool = True) -> RunDir:
    """A run directory as `aae-pipeline run` leaves it (config, manifest, checkpoints and, if `evaluated`,
    evaluation.json), trained for two epochs on the tiny synthetic set with small nets, in this process."""
    from pipeline.stages.evaluate import evaluate

    config = load_config(experiment, tiny_overrides(dataset, "train.epochs=2", *EVALUATE_FAST, *extra))
    path.mkdir(parents=True)
    run = RunDir(path)
    atomic_write_text(path / CONFIG_FILE, config_to_yaml(config))
    run.update_manifest(experiment=config.experiment, run_key=run_key(config), config=config.model_dump(mode="json"),
                        commands=[f"aae-pipeline run {experiment} --epochs 2"])
    run.record_stage("prepare", status="done", outputs={"image_shape": [28, 28]})
    train_loop(config, run, WorkerContext())
    run.record_stage("train", status="done")
    if evaluated:
        evaluate(config, run)
    return run


@contextmanager
def held_by_another_process(directory: Path) -> Iterator[subprocess.Popen]:
    """Another live process holds `directory` (a run's or a sweep's) for the block, as a driver would; it is
    killed afterwards, so the kernel drops its lock."""
    directory.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; from pathlib import Path; from pipeline.rundir import holding\n"
         f"with holding(Path({str(directory)!r}), ''):\n    print('held', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait()


def listening_addresses(root_pid: int) -> list[str]:
    """The local address of every TCP socket listening in `root_pid` or its descendants (from /proc, so that no
    tool need be installed)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    pids, todo = set(), [root_pid]
    while todo:
        pid = todo.pop()
        pids.add(pid)
        todo.extend(children.get(pid, []))
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    addresses = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state, inode = line.split()[1], line.split()[3], line.split()[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                address, port = local.split(":")
                raw = bytes.fromhex(address)
                # /proc prints each 32-bit word of the address in host (little-endian) order
                ordered = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                host = socket.inet_ntop(socket.AF_INET if width == 8 else socket.AF_INET6, ordered)
                addresses.append(f"{host}:{int(port, 16)}")
    return addresses


def on_loopback(address: str) -> bool:
    host = address.rpartition(":")[0]
    return host.startswith("127.") or host in ("::1", "::ffff:127.0.0.1")
