"""A local run's Ray listens on loopback only, so that a laptop on a shared network exposes none of its ports.

Two things bind every interface otherwise, and each needs a switch that is not public API (a Ray or torch
upgrade that moves one leaves that server listening as before, which tests/pipeline/test_robustness_ray.py
catches):
- Ray's servers (GCS, raylet, object manager, every worker's) listen on all interfaces unless the node's
  address is the loopback one, and Ray picks loopback only where it believes no cluster can form
  (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, read once when ray is imported).
- torch.distributed's rendezvous store, which rank 0 hosts for the process group that Ray Train sets up,
  listens on all interfaces whatever address it is given; started on a socket already bound to loopback
  (`master_listen_fd`), it listens there alone. Ray Train's torch backend is extended to arrange that in each
  worker before it sets up the group.
"""

from __future__ import annotations

import importlib
import os
import socket
from datetime import timedelta
from typing import Any

LOOPBACK = "127.0.0.1"


def listen_on_loopback_only() -> None:
    """Make the local Ray about to start in this process listen on loopback."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # Ray's processes, started after this, read it
    try:
        from ray._private import ray_constants
    except ImportError:
        return
    if hasattr(ray_constants, "ENABLE_RAY_CLUSTER"):
        ray_constants.ENABLE_RAY_CLUSTER = False  # this process imported ray before the variable was set


def loopback_torch_config(backend: str) -> Any:
    """Ray Train's TorchConfig for a local run: its workers bind the rendezvous store to loopback before Ray
    Train sets up their process group."""
    from ray.train.torch import TorchConfig
    from ray.train.torch.config import _TorchBackend

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
    loopback address, listens on loopback only (torch's store binds every interface when it opens the port)."""
    rendezvous = importlib.import_module("torch.distributed.rendezvous")  # the module, not the function
    create = getattr(rendezvous, "_create_c10d_store", None)
    if create is None:
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
