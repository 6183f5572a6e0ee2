"""Every use of a Ray or torch internal (an API they do not publish), in one place, each with a fallback.

An upgrade that moves one of them costs what its fallback says, never the run:
- session_dir: a failed Ray Train controller's own log is not copied into the run directory;
- send_token_if_available: `--address` to a token-authenticated head must be given RAY_AUTH_MODE=token;
- a local run's loopback-only listening (listen_on_loopback_only, loopback_torch_config): its servers and the
  torch rendezvous listen as Ray and torch decide (every interface), and the run says so once.
tests/pipeline/test_ray_internals.py checks each fallback.
"""

from __future__ import annotations

import importlib
import os
import socket
from datetime import timedelta
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"
_said: set[str] = set()


def _say_once(what: str) -> None:
    """One line where a fallback changes what the user gets."""
    if what not in _said:
        _said.add(what)
        from pipeline.progress import console

        console.print(f"note: this Ray or torch version hides {what}")


def session_dir() -> Path | None:
    """The connected Ray session's directory on this node (its logs), or None where it cannot be found."""
    try:
        import ray

        return Path(ray._private.worker._global_node.get_session_dir_path())
    except Exception:  # not connected, or a Ray that moved it
        return None


def send_token_if_available() -> bool:
    """Send this machine's Ray token (if any) to an explicit address, as Ray does only for clusters it finds
    itself; True if one will be sent. RAY_AUTH_MODE, when the user set it, is respected."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # a Ray without token authentication, or one that moved it
        return False
    return bool(maybe_enable_token_auth_if_token_available(warn_if_disabled=False))


def listen_on_loopback_only() -> None:
    """Make the local Ray about to start in this process listen on loopback only.

    Ray's servers (GCS, raylet, object manager, every worker's) bind all interfaces unless the node's address is
    the loopback one, and Ray picks loopback only where it believes no cluster can form: the switch
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which Ray's processes started after this read from the environment and
    this process read when it imported ray (hence the constant too)."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    try:
        from ray._private import ray_constants
    except ImportError:
        ray_constants = None
    if ray_constants is None or not hasattr(ray_constants, "ENABLE_RAY_CLUSTER"):
        _say_once("how to keep a local Ray on 127.0.0.1: its ports may listen on every interface")
        return
    ray_constants.ENABLE_RAY_CLUSTER = False


def loopback_torch_config(backend: str) -> Any:
    """Ray Train's TorchConfig for a local run: its workers host torch's rendezvous store on loopback (torch binds
    it to every interface when it opens the port itself)."""
    from ray.train.torch import TorchConfig

    try:
        from ray.train.torch.config import _TorchBackend
    except ImportError:
        _say_once("Ray Train's torch backend: the training workers' rendezvous may listen on every interface")
        return TorchConfig(backend=backend)

    class LoopbackTorchBackend(_TorchBackend):
        def on_start(self, worker_group: Any, backend_config: Any) -> None:
            worker_group.execute(bind_rendezvous_store_to_loopback)
            super().on_start(worker_group, backend_config)

    class LoopbackTorchConfig(TorchConfig):
        @property
        def backend_cls(self) -> type:
            return LoopbackTorchBackend

    return LoopbackTorchConfig(backend=backend)


def bind_rendezvous_store_to_loopback() -> None:
    """In a training worker: rank 0's torch.distributed store, for a group whose master is this machine's
    loopback address, listens on loopback only (started on a socket already bound there: `master_listen_fd`)."""
    rendezvous = importlib.import_module("torch.distributed.rendezvous")  # the module, not the function
    create = getattr(rendezvous, "_create_c10d_store", None)
    if create is None:  # a torch that moved it: the store listens as torch decides
        return

    def create_on_loopback(hostname: str, port: int, rank: int, world_size: int, timeout: timedelta,
                           use_libuv: bool = True) -> Any:
        if rank != 0 or hostname != LOOPBACK:
            return create(hostname, port, rank, world_size, timeout, use_libuv)
        from torch.distributed import TCPStore

        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((LOOPBACK, port))
        listener.listen(socket.SOMAXCONN)
        return TCPStore(host_name=hostname, port=port, world_size=world_size, is_master=True, timeout=timeout,
                        multi_tenant=True, master_listen_fd=listener.detach(), use_libuv=use_libuv)

    rendezvous._create_c10d_store = create_on_loopback
