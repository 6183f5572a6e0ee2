"""Helpers the test files share: run directories made in-process (no Ray), the real CLI in a subprocess, and Ray
clusters started with `ray start` in a private HOME and RAY_TMPDIR."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.chain import run_key
from pipeline.config import config_to_yaml, load_config
from pipeline.loop import WorkerContext, train_loop
from pipeline.rundir import CONFIG_FILE, RunDir, atomic_write_text
from tests.conftest import TINY_MODEL, tiny_overrides

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
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


def new_run(tmp_path: Path, name: str = "semisup-20250101-120000") -> RunDir:
    run = RunDir(tmp_path / name)
    run.path.mkdir(parents=True)
    return run


def evaluated_run(tmp_path: Path) -> RunDir:
    """A run directory as evaluate and visualize leave it: config.yaml, best.pt (an untrained tiny model),
    evaluation.json, two figures."""
    import numpy as np
    from matplotlib.image import imsave

    from aae.variants import build_model
    from pipeline.checkpoints import checkpoint_bytes

    run = new_run(tmp_path)
    config = load_config("semisup", ["tracking.wandb=offline", *TINY_MODEL])
    (run.path / CONFIG_FILE).write_text(config_to_yaml(config))
    model = build_model(config.model.variant, {"input_dim": 784, **config.model.params})
    run.checkpoint_dir.mkdir()
    run.best_checkpoint.write_bytes(checkpoint_bytes(model.training_state(), 0, {"val/error": 1.0}))
    (run.path / "figures").mkdir()
    for name in ("latent_scatter", "samples"):
        imsave(run.path / "figures" / f"{name}.png", np.random.default_rng(0).random((8, 8)))
    evaluation = {
        "metrics": {"test/error": 4.5, "test/recon_bce": 70.25},
        "tables": {"per_class_error": {"columns": ["class", "test examples", "error %"],
                                       "rows": [[0, 10, 0.0], [1, 12, 8.5]]}},
    }
    (run.path / "evaluation.json").write_text(json.dumps(evaluation))
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


# --- the CLI in a subprocess --------------------------------------------------------------------------------


def cli_command(*args: str, fault: str | None = None) -> list[str]:
    """The command line of `aae-pipeline ARGS`; with fault="EPOCH:STEP:RANK", one training worker is killed
    there once, with fault="controller:EPOCH" Ray Train's controller fails once after that epoch (tests/faults.py)."""
    return [sys.executable, "-m", "pipeline.cli", *args] if fault is None else \
        [sys.executable, "-m", "tests.faults", fault, *args]


def cli_env(env: dict[str, str]) -> dict[str, str]:
    """`env` plus this checkout on PYTHONPATH, so that `-m tests.faults` resolves from any working directory."""
    paths = [str(REPO), *filter(None, [env.get("PYTHONPATH")])]
    return {**env, "PYTHONPATH": os.pathsep.join(paths)}


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None, fault: str | None = None,
            base_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `aae-pipeline ARGS` in a fresh interpreter, as a user would: in this process's environment (or
    `base_env`) plus `env`."""
    return subprocess.run(
        cli_command(*args, fault=fault),
        cwd=cwd,
        env=cli_env({**(os.environ if base_env is None else base_env), **(env or {})}),
        capture_output=True,
        text=True,
        timeout=600,
    )


def sets(dataset: dict[str, str], *extra: str) -> list[str]:
    """--set arguments for semisup on the tiny data set with 100 labels and small nets."""
    return [arg for override in tiny_overrides(dataset, "data.labels=100", *extra) for arg in ("--set", override)]


def epochs_logged(run_dir: Path) -> list[int]:
    return [row["epoch"] for row in RunDir(run_dir).read_metrics()]


def manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def popen_with_ctrl_c(command: list[str], **options: Any) -> subprocess.Popen:
    """subprocess.Popen(command, **options), the child taking Ctrl-C (SIGINT) as from a terminal.

    A shell without job control starts background commands with SIGINT ignored, and a child inherits that, so
    pytest launched that way (`.ci/run &` in a script) would start a command deaf to Ctrl-C. Handled signals are
    reset to their default by exec, so catching SIGINT here while the child starts gives it a terminal's."""
    ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(command, **options)
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def start_run(run_dir: Path, dataset: dict[str, str], *args: str, env: dict[str, str]) -> subprocess.Popen:
    """`aae-pipeline run ARGS` into run_dir, in its own process group, as a terminal would start it."""
    return popen_with_ctrl_c(
        [sys.executable, "-m", "pipeline.cli", "run", *args, "--run-dir", str(run_dir),
         *sets(dataset, "tracking.wandb=disabled")],
        cwd=run_dir.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )


def wait_for_epochs(run_dir: Path, process: subprocess.Popen, count: int = 1, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not (run_dir / "metrics.jsonl").exists() or len(epochs_logged(run_dir)) < count:
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no epoch finished in time"
        time.sleep(0.5)


def wait_until_gone(pid: int, timeout_s: float = 60) -> None:
    """Wait for a process to exit (a Ray worker outlives its killed driver for a second or two)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:  # the state is the field after the parenthesised name; Z: exited, not yet reaped
            if Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z":
                return
        except FileNotFoundError:
            return
        assert time.monotonic() < deadline, f"process {pid} still running"
        time.sleep(0.2)


def wait_for(condition, timeout_s: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


# --- Ray clusters -------------------------------------------------------------------------------------------


ANSWER = "ANSWER "  # what a cluster client prints before its result


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def end_group(process: subprocess.Popen, abruptly: bool = False) -> None:
    """Stop a `ray start --block` node and everything it started; `abruptly`: SIGKILL all at once, as a machine
    that dies.

    Otherwise only the leader gets SIGTERM first: it drains the node through the GCS, which it waits 30 s for
    when the GCS went down with it."""
    if not abruptly:
        with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
            os.kill(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the rest of the group is reaped by init a moment later
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)


class RayCluster:
    """A Ray cluster of `ray start --block` nodes on this machine, in a private HOME (with a Ray token, as after
    any earlier local Ray, so Ray 2.60 turns token authentication on) and RAY_TMPDIR: the user's ~/.ray and
    /tmp/ray stay untouched. `root` must be short: Ray's socket paths must stay under ~100 characters."""

    def __init__(self, root: Path, **env: str) -> None:
        self.root = root
        home = root / "home"
        (home / ".ray").mkdir(parents=True)
        (home / ".ray" / "auth_token").write_text(secrets.token_hex(32))
        self.env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
        self.env.update(HOME=str(home), RAY_TMPDIR=str(root), **env)
        self.address = f"127.0.0.1:{free_port()}"
        self.nodes: dict[str, subprocess.Popen] = {}

    def start_node(self, name: str, cpus: int, prefix: list[str] | None = None) -> None:
        """`ray start` one node (the first is the head), with a custom resource named after it (node_…), and wait
        until it runs."""
        role = ["--head", "--port", self.address.rpartition(":")[2], "--include-dashboard=false"] \
            if not self.nodes else ["--address", self.address]
        log_path = self.root / f"{name}.log"
        with log_path.open("w") as log:
            self.nodes[name] = subprocess.Popen(
                [*(prefix or []), RAY, "start", "--block", *role, "--num-cpus", str(cpus),
                 "--resources", json.dumps({name: 1}), "--disable-usage-stats"],
                # A node joins an explicit address with the token only in token mode (the CLI does this itself).
                env={**self.env, **({"RAY_AUTH_MODE": "token"} if self.nodes else {})},
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + 90
        while "Ray runtime started" not in log_path.read_text():
            assert self.nodes[name].poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.5)

    def stop_node(self, name: str, abruptly: bool = False) -> None:
        """Stop a node; after an abrupt stop, also wait until the cluster has declared it dead (its health checks
        take some seconds): until then a client started next may attach to its raylet, or a task be placed there."""
        end_group(self.nodes.pop(name), abruptly)
        if abruptly and self.nodes:
            wait_for(lambda: self._declared_dead(name), 120, f"the cluster to see {name} gone")

    def _declared_dead(self, name: str) -> bool:
        """Whether the cluster no longer lists node `name`. A client started before the GCS has declared a dead
        node dead may attach to that node's raylet and hang: that counts as not yet."""
        try:
            return name not in self.node_ids(timeout_s=20).values()
        except (AssertionError, subprocess.TimeoutExpired):
            return False

    def stop(self) -> None:
        """End the whole cluster at once: with every node going, a graceful drain only waits on the others."""
        for name in reversed(list(self.nodes)):
            end_group(self.nodes.pop(name), abruptly=True)

    def python(self, script: str, timeout_s: float = 120) -> str:
        """Run a Python script as a client of this cluster (RAY_ADDRESS set); what it printed after `ANSWER `
        (Ray may print notices of its own, a node's death for one, at any time)."""
        result = subprocess.run([sys.executable, "-c", script],
                                env={**self.env, "RAY_AUTH_MODE": "token", "RAY_ADDRESS": self.address},
                                capture_output=True, text=True, timeout=timeout_s)
        assert result.returncode == 0, result.stderr[-2000:]
        answers = [line.removeprefix(ANSWER) for line in result.stdout.splitlines() if line.startswith(ANSWER)]
        assert answers, result.stdout[-2000:]
        return answers[-1]

    def node_ids(self, timeout_s: float = 120) -> dict[str, str]:
        """Node id → the node's name (its custom resource), as the cluster sees them now."""
        nodes = json.loads(self.python(
            "import json, ray; ray.init(logging_level='ERROR')\n"
            f"print({ANSWER!r} + json.dumps({{n['NodeID']: [r for r in n['Resources'] if r.startswith('node_')] "
            "for n in ray.nodes() if n['Alive']}))", timeout_s))
        return {node: names[0] for node, names in nodes.items() if names}

    def free_cpus(self) -> float:
        return float(self.python("import ray; ray.init(logging_level='ERROR')\n"
                                 f"print({ANSWER!r}, ray.available_resources().get('CPU', 0.0), sep='')"))

    def cli(self, *args: str, cwd: Path, fault: str | None = None, **env: str) -> subprocess.CompletedProcess:
        """`aae-pipeline ARGS` in this cluster's environment (its token's HOME); pass --address to join it."""
        return run_cli(*args, cwd=cwd, fault=fault, base_env=self.env, env=env)

    def sessions(self) -> list[str]:
        """The Ray sessions started under this cluster's RAY_TMPDIR (its own and any private instance's)."""
        return sorted(path.name for path in (self.root / "ray").glob("session_2*"))
