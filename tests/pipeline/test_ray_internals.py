"""The Ray and torch internals the pipeline uses, each through pipeline.ray.internals: what they do, and that a
version that moved one degrades one message, not the run."""

from __future__ import annotations

import importlib
import os
import socket
import sys
from datetime import timedelta

import pytest
import ray.train.torch.config as ray_torch_config
from ray._private import ray_constants
from ray.train.torch import TorchConfig

from pipeline.ray import internals
from pipeline.ray.trainer import controller_log_errors
from tests.helpers import listening_addresses, on_loopback

RENDEZVOUS = importlib.import_module("torch.distributed.rendezvous")


@pytest.fixture(autouse=True)
def _fresh_notes(monkeypatch) -> None:
    monkeypatch.setattr(internals, "_said", set())


def test_without_a_ray_session_the_controller_log_is_simply_left_out() -> None:
    assert internals.session_dir() is None  # no Ray in this process
    assert controller_log_errors() == ""


def test_a_ray_without_its_token_helper_sends_no_token(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray._private.authentication.authentication_token_setup", None)
    assert internals.send_token_if_available() is False


def test_a_local_ray_is_told_to_listen_on_loopback_and_says_so_when_it_cannot_be(monkeypatch, capsys) -> None:
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", True)
    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
    internals.listen_on_loopback_only()
    assert ray_constants.ENABLE_RAY_CLUSTER is False and os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    assert capsys.readouterr().out == ""
    monkeypatch.delattr(ray_constants, "ENABLE_RAY_CLUSTER")
    internals.listen_on_loopback_only()
    internals.listen_on_loopback_only()
    [note] = capsys.readouterr().out.strip().splitlines()  # once
    assert note.startswith("note: this Ray or torch version hides how to keep a local Ray on 127.0.0.1")


def test_the_torch_config_binds_the_rendezvous_or_falls_back_to_ray_s_own(monkeypatch, capsys) -> None:
    extended = internals.loopback_torch_config("gloo")
    assert issubclass(extended.backend_cls, ray_torch_config._TorchBackend) and extended.backend == "gloo"
    monkeypatch.delattr(ray_torch_config, "_TorchBackend")
    plain = internals.loopback_torch_config("gloo")
    assert type(plain) is TorchConfig
    assert "training workers' rendezvous may listen on every interface" in capsys.readouterr().out


def test_the_rendezvous_store_of_a_local_group_listens_on_loopback_only(monkeypatch) -> None:
    monkeypatch.setattr(RENDEZVOUS, "_create_c10d_store", RENDEZVOUS._create_c10d_store)  # restored afterwards
    internals.bind_rendezvous_store_to_loopback()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    store = RENDEZVOUS._create_c10d_store("127.0.0.1", port, 0, 1, timedelta(seconds=10))
    store.set("key", "value")
    mine = [address for address in listening_addresses(os.getpid()) if address.endswith(f":{port}")]
    assert mine and all(on_loopback(address) for address in mine), mine
    monkeypatch.delattr(RENDEZVOUS, "_create_c10d_store")
    internals.bind_rendezvous_store_to_loopback()  # a torch that moved it: nothing to extend, nothing breaks
    assert not hasattr(RENDEZVOUS, "_create_c10d_store")
