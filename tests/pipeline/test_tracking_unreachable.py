"""W&B with credentials but no network: decided once in the driver, said once in the terminal, nothing waits."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import wandb

from pipeline.chain import _print_summary
from pipeline.config import config_to_yaml, load_config
from pipeline.rundir import RunDir
from pipeline.stages.track import track
from pipeline.sweep import _track_summary
from pipeline.tracking import host_problem, make_tracker, recorded_errors, settle_tracking, wandb_run_id
from tests.helpers import evaluated_run, new_run, run_cli, sets
from tests.wandb_offline import find_offline_runs

FAKE_KEY = "x" * 40


def closed_port() -> int:
    """A loopback port with nothing listening (connecting is refused at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def unreachable_wandb(monkeypatch) -> str:
    """Credentials set, $WANDB_MODE unset (auto means online), and the W&B host a closed loopback port."""
    host = f"127.0.0.1:{closed_port()}"
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_INIT_TIMEOUT", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://{host}")
    return host


def w_and_b_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("W&B:") or "warning: W&B" in line]


@pytest.mark.slow
def test_a_run_with_an_unreachable_host_warns_once_and_tracks_offline(
    synthetic_dataset, tmp_path, unreachable_wandb
) -> None:
    run_dir = tmp_path / "run"
    result = run_cli(
        "run", "semisup", "--epochs", "1", "--run-dir", str(run_dir),
        *sets(synthetic_dataset, "evaluate.parzen_samples=200", "evaluate.parzen_validation=100"), cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (warning,) = w_and_b_lines(result.stdout)  # one line, in the user's terminal, naming the host
    assert f"W&B: {unreachable_wandb} unreachable (" in warning and "tracking offline" in warning
    hint = f"wandb sync -n 1 {run_dir / 'wandb'}/offline-run-*"
    assert hint in warning and f"upload it with: {hint}" in result.stdout
    stages = json.loads((run_dir / "manifest.json").read_text())["stages"]
    # wandb.init alone would wait 90 s per run against a dead host; offline it takes a second or two.
    assert stages["track"]["seconds"] < 20
    assert stages["track"]["outputs"]["wandb_mode"] == "offline" and "wandb_error" not in stages["track"]["outputs"]
    assert sorted(path.name.rsplit("-", 1)[1] for path in (run_dir / "wandb").glob("offline-run-*")) == [
        "evaluate", "train"
    ]
    runs = find_offline_runs(run_dir / "wandb")
    assert [row["epoch"] for row in runs[wandb_run_id(RunDir(run_dir), "train")].history if "epoch" in row] == [1]
    assert "test/error" in runs[wandb_run_id(RunDir(run_dir), "evaluate")].summary


def test_settling_an_unreachable_host_goes_offline_at_once(tmp_path, unreachable_wandb, capsys) -> None:
    config = load_config("semisup")
    started = time.perf_counter()
    settled = settle_tracking(config, tmp_path)
    assert time.perf_counter() - started < 2  # a refused connection is known at once
    assert settled.tracking.wandb == "offline" and config.tracking.wandb == "auto"
    assert settled.model_dump(exclude={"tracking"}) == config.model_dump(exclude={"tracking"})
    (line,) = w_and_b_lines(capsys.readouterr().out)
    assert unreachable_wandb in line and f"wandb sync -n 1 {tmp_path}/wandb/offline-run-*" in line


@pytest.mark.parametrize("setting", ["offline", "disabled"])
def test_settling_a_mode_that_needs_no_network_probes_nothing(setting, tmp_path, unreachable_wandb, capsys) -> None:
    config = load_config("semisup", [f"tracking.wandb={setting}"])
    assert settle_tracking(config, tmp_path) is config
    assert capsys.readouterr().out == ""


def test_a_host_that_answers_keeps_the_mode(tmp_path, monkeypatch, capsys) -> None:
    class NotFound(BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:  # any answer means the host is there
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.delenv("WANDB_MODE", raising=False)
        monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.server_port}")
        config = load_config("semisup")
        assert settle_tracking(config, tmp_path) is config
    finally:
        server.shutdown()
        server.server_close()
    assert capsys.readouterr().out == ""


def test_a_host_that_never_answers_is_given_up_on_after_the_timeout() -> None:
    with socket.socket() as silent:  # accepts connections (the backlog) but never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        started = time.perf_counter()
        problem = host_problem(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=0.5)
    assert problem is not None and ("timed out" in problem or "no answer" in problem)
    assert time.perf_counter() - started < 2


def test_tracking_errors_in_ray_workers_reach_the_driver(tmp_path, monkeypatch, capsys) -> None:
    run = evaluated_run(tmp_path)
    config = load_config("semisup", ["tracking.wandb=offline"])
    monkeypatch.setattr(wandb, "init", lambda **kwargs: (_ for _ in ()).throw(ConnectionError("no route")))
    make_tracker(config, run, "train").finish()  # what rank 0 of Ray Train does; its print is lost there
    assert recorded_errors(run.path) == {"train": "init: ConnectionError no route"}
    outputs = track(config, run)  # the track stage, a Ray task: its print is lost too
    assert outputs["wandb_train_error"] == "init: ConnectionError no route"
    assert outputs["wandb_error"] == "init: ConnectionError no route"
    with run.stage("track", input_hash="-") as recorded:
        recorded.update(outputs)
    capsys.readouterr()

    _print_summary(config, run, {"test/error": 4.5})
    warnings = [line for line in capsys.readouterr().out.splitlines() if "warning: W&B tracking failed" in line]
    assert len(warnings) == 2
    assert "train run: init: ConnectionError no route" in warnings[0] and "evaluate run" in warnings[1]


def test_a_tracker_that_starts_again_clears_the_earlier_error(tmp_path, monkeypatch) -> None:
    run = new_run(tmp_path)
    config = load_config("semisup", ["tracking.wandb=offline"])
    real_init = wandb.init
    monkeypatch.setattr(wandb, "init", lambda **kwargs: (_ for _ in ()).throw(ConnectionError("no route")))
    make_tracker(config, run, "train").finish()
    assert "train" in recorded_errors(run.path)
    monkeypatch.setattr(wandb, "init", real_init)
    tracker = make_tracker(config, run, "train")  # e.g. Ray Train restarting the worker group
    tracker.finish()
    assert tracker.error is None and recorded_errors(run.path) == {}


def test_a_sweep_reports_the_trials_tracking_errors_once(tmp_path, capsys) -> None:
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    # Tracking off in base.yaml, so the summary tracker itself writes nothing.
    (sweep / "base.yaml").write_text(config_to_yaml(load_config("semisup", ["tracking.wandb=disabled"])))
    for trial in ("t1", "t2"):
        (sweep / "trials" / trial / "wandb").mkdir(parents=True)
        (sweep / "trials" / trial / "wandb" / "tune-trial-error.txt").write_text(f"init: CommError {trial}\n")
    _track_summary(sweep, "val/error", [], None)
    (line,) = [line for line in capsys.readouterr().out.splitlines() if "W&B" in line]
    assert "2 trial run(s)" in line and "init: CommError t1" in line
