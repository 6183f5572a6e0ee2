"""The Docker Compose cluster: safe by default, one shared volume, workers that find the head.

No Docker engine runs here, so nothing is started: the file is checked by a real compose implementation
where one is installed, its safety properties are read from the YAML, and the entrypoint's `ray start`
lines are built in --dry-run mode.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
SHARED = "aae-shared"
FAKE_TOKEN = "0" * 64
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message}, ${VAR?message}
INTERPOLATION = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def resolve(value: Any, env: dict[str, str] | None = None) -> str:
    """A compose value as a container would see it, with `env` as the user's environment."""
    env = env if env is not None else {"RAY_AUTH_TOKEN": FAKE_TOKEN}

    def substitute(match: re.Match[str]) -> str:
        name, op, arg = match.groups()
        if name in env:
            return env[name]
        return arg if op and "-" in op else ""

    return INTERPOLATION.sub(substitute, str(value))


def container_env(service: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, str]:
    return {key: resolve(value, env) for key, value in service["environment"].items() if value is not None}


def ray_start(role: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The entrypoint's `ray start` line for `role`, printed rather than run."""
    clean = {key: value for key, value in os.environ.items() if not key.startswith(("RAY_", "WANDB_"))}
    return subprocess.run(
        ["bash", str(ENTRYPOINT), role, "--dry-run"], env={**clean, **env}, capture_output=True, text=True, check=False
    )


def published(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(host ip, host port, container port) for each published port, short or long syntax."""
    rows = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            rows.append((port.get("host_ip", ""), str(port.get("published", "")), str(port["target"])))
            continue
        parts = str(port).split(":")
        rows.append(("", *parts) if len(parts) == 2 else tuple(parts) if len(parts) == 3 else ("", "", parts[0]))
    return rows


def test_every_published_port_is_bound_to_loopback(compose):
    ports = [(name, row) for name, service in compose["services"].items() for row in published(service)]
    assert ports, "the head should publish its ports on the host"
    for name, (host_ip, host_port, _) in ports:
        assert host_ip == "127.0.0.1" and host_port, f"{name} publishes {host_port} beyond this machine"


def test_head_publishes_gcs_dashboard_and_client_ports(compose):
    targets = {target for _, _, target in published(compose["services"]["head"])}
    assert targets == {"6379", "8265", "10001"}


def test_compose_file_and_image_hold_no_secrets(compose):
    secret_keys = re.compile(r"TOKEN|KEY|SECRET|PASSWORD", re.IGNORECASE)
    for name, service in compose["services"].items():
        for key, value in service["environment"].items():
            if secret_keys.search(key):
                match = INTERPOLATION.fullmatch(str(value))
                assert match and match.group(1) == key, f"{name}.{key} must come from the environment"
                assert not (match.group(2) == ":-" and match.group(3)), f"{name}.{key} has a default secret"
    for path in (COMPOSE_FILE, DOCKERFILE):
        assert not re.search(r"\b[0-9a-f]{32,}\b", path.read_text()), f"{path.name} holds a token-like string"
    instructions = [line.split() for line in DOCKERFILE.read_text().splitlines() if line and not line[0].isspace()]
    assert not any(words[0] in ("ENV", "ARG") and secret_keys.search(" ".join(words[1:])) for words in instructions)
    assert not any(words[0] in ("COPY", "ADD") and words[-2:-1] == ["."] for words in instructions), "COPY . ."


def test_every_node_mounts_the_shared_volume_at_the_same_path(compose):
    assert SHARED in compose["volumes"]
    mounts = {}
    for name, service in compose["services"].items():
        paths = [volume.split(":")[1] for volume in service["volumes"] if volume.split(":")[0] == SHARED]
        assert len(paths) == 1, f"{name} does not mount {SHARED}"
        mounts[name] = paths[0]
        # runs/ lands under the working directory; the prepared dataset under AAE_DATA_DIR: both shared.
        assert service["working_dir"].startswith(paths[0])
        assert container_env(service)["AAE_DATA_DIR"].startswith(paths[0] + "/")
    assert len(set(mounts.values())) == 1, mounts


def test_gpu_worker_is_behind_a_profile_with_a_device_reservation(compose):
    services = compose["services"]
    assert "gpu" in services["gpu-worker"]["profiles"]
    devices = services["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(device["driver"] == "nvidia" and "gpu" in device["capabilities"] for device in devices)
    assert all("profiles" not in services[name] for name in ("head", "worker")), "the CPU cluster starts plainly"
    assert ":2.60.0-py311-gpu" in services["gpu-worker"]["build"]["args"]["BASE_IMAGE"]


def _bytes(size: str) -> float:
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmg]?)b?", size.lower()).groups()
    return float(number) * 1024 ** " kmg".index(unit or " ")


def test_every_node_has_shm_for_the_object_store(compose):
    for name, service in compose["services"].items():
        shm = _bytes(resolve(service["shm_size"]))
        store = float(container_env(service)["RAY_OBJECT_STORE_MEMORY"])
        assert shm >= 1024**3 and store < shm, f"{name}: object store {store:g} B in {shm:g} B of /dev/shm"


def test_entrypoint_script_parses():
    assert subprocess.run(["bash", "-n", str(ENTRYPOINT)], check=False).returncode == 0
    assert "docker/entrypoint.sh" in DOCKERFILE.read_text().split("ENTRYPOINT", 1)[1].splitlines()[0]


def test_head_entrypoint_starts_ray_on_the_published_ports(compose):
    head = compose["services"]["head"]
    result = ray_start(head["command"][0], container_env(head))
    assert result.returncode == 0, result.stderr
    args = shlex.split(result.stdout)
    assert args[:3] == ["ray", "start", "--head"] and args[-1] == "--block"
    assert "--dashboard-host=0.0.0.0" in args, "the dashboard must listen beyond the container's loopback"
    assert {"--port=6379", "--dashboard-port=8265", "--ray-client-server-port=10001", "--num-cpus=0"} <= set(args)


@pytest.mark.parametrize("name", ["worker", "gpu-worker"])
def test_worker_entrypoints_join_the_head(compose, name):
    service = compose["services"][name]
    result = ray_start(service["command"][0], container_env(service))
    assert result.returncode == 0, result.stderr
    args = shlex.split(result.stdout)
    assert args[:2] == ["ray", "start"] and "--head" not in args and args[-1] == "--block"
    head_host = compose["services"]["head"]["hostname"]
    assert f"--address={head_host}:6379" in args
    assert any(arg.startswith("--num-cpus=") for arg in args)
    assert ("--num-gpus=1" in args) == (name == "gpu-worker")
    assert service["depends_on"]["head"]["condition"] == "service_healthy"


def test_entrypoint_refuses_a_token_cluster_without_a_token(compose):
    env = container_env(compose["services"]["worker"], env={})
    result = ray_start("worker", env)
    assert result.returncode == 2 and "RAY_AUTH_TOKEN" in result.stderr and not result.stdout


def _compose_commands() -> list[list[str]]:
    found = []
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        found.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        found.append(["docker-compose"])
    return found


COMPOSE_COMMANDS = _compose_commands()


@pytest.mark.skipif(not COMPOSE_COMMANDS, reason="no compose implementation installed (docker compose, docker-compose)")
@pytest.mark.parametrize("command", COMPOSE_COMMANDS, ids=" ".join)
def test_a_real_compose_accepts_the_file_and_demands_a_token(command, tmp_path):
    empty_env_file = tmp_path / "empty.env"  # keeps a developer's .env out of the check
    empty_env_file.write_text("")
    base = [*command, "--env-file", str(empty_env_file), "-f", str(COMPOSE_FILE)]
    env = {key: value for key, value in os.environ.items() if not key.startswith(("RAY_", "WANDB_"))}
    for profile in ([], ["--profile", "gpu"]):
        ok = subprocess.run([*base, *profile, "config"], env={**env, "RAY_AUTH_TOKEN": FAKE_TOKEN},
                            capture_output=True, text=True, check=False)
        assert ok.returncode == 0, ok.stderr
        rendered = yaml.safe_load(ok.stdout)
        assert {"head", "worker"} <= set(rendered["services"])
    missing = subprocess.run([*base, "config"], env=env, capture_output=True, text=True, check=False)
    assert missing.returncode != 0 and "RAY_AUTH_TOKEN" in missing.stderr
