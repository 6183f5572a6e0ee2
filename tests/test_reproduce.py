"""benchmarks/reproduce.py, the script that fills the paper's table: rows it cannot run, the table it rebuilds,
and rows trained side by side within a time limit."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from types import ModuleType

import pytest

from pipeline.rundir import RunDir
from tests.conftest import tiny_overrides
from tests.helpers import REPO, cli_env, epochs_logged


def _benchmark_module(name: str) -> ModuleType:
    """A script of benchmarks/ imported as a module (benchmarks/ is not a package)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


def test_reproduce_skips_the_svhn_row_without_data_and_says_how_to_get_it(tmp_path, capsys) -> None:
    reproduce = _benchmark_module("reproduce")
    results = tmp_path / "reproduce.md"
    code = reproduce.main(["--only", "semisup-svhn", "--svhn", f"svhn:{tmp_path / 'none'}",
                           "--out-dir", str(tmp_path / "runs"), "--results", str(results)])
    assert code == 0
    assert "skipped: SVHN is not available here" in capsys.readouterr().out
    (row,) = json.loads(results.with_suffix(".json").read_text())["rows"]
    assert row["experiment"] == "semisup-svhn" and row["paper"] == "17.70 ±0.30" and row["ours"] is None
    assert row["status"].startswith("no data") and "aae-pipeline data prepare svhn" in row["status"]
    assert f"data.dataset=svhn:{tmp_path / 'none'}" in row["command"]
    assert not (tmp_path / "runs" / "semisup-svhn").exists()


def test_reproduce_rebuilds_its_table_and_keeps_the_sections_written_below_it(tmp_path) -> None:
    reproduce = _benchmark_module("reproduce")
    results = tmp_path / "reproduce.md"
    results.write_text("# old title\n\n| old table |\n\n## Measured elsewhere\n\nkept by hand\n\n## Another\n\nalso\n")
    reproduce.main(["--only", "semisup-svhn", "--svhn", f"svhn:{tmp_path / 'none'}",
                    "--out-dir", str(tmp_path / "runs"), "--results", str(results)])
    text = results.read_text()
    assert "old title" not in text and "| old table |" not in text
    assert text.startswith("# The paper's experiments, reproduced") and "| semisup-svhn |" in text
    assert text.endswith("\n## Measured elsewhere\n\nkept by hand\n\n## Another\n\nalso\n")


@pytest.mark.slow
def test_rows_trained_side_by_side_keep_their_curves_and_a_time_limit_keeps_what_finished(
        ray_cluster, synthetic_dataset, tmp_path) -> None:
    results, runs = tmp_path / "results" / "reproduce.md", tmp_path / "runs"

    def reproduce(*args: str) -> subprocess.CompletedProcess:
        sets = [arg for override in tiny_overrides(synthetic_dataset, "tracking.wandb=disabled")
                for arg in ("--set", override)]
        return subprocess.run(
            [sys.executable, str(REPO / "benchmarks" / "reproduce.py"), *args, *sets, "--address",
             ray_cluster.address, "--out-dir", str(runs), "--results", str(results)],
            env=cli_env(ray_cluster.env), capture_output=True, text=True, timeout=600)

    both = reproduce("--only", "semisup-100", "cluster16", "--epochs", "2", "--parallel", "2", "--minutes", "8")
    assert both.returncode == 0, both.stdout[-3000:] + both.stderr[-3000:]
    rows = {row["experiment"]: row for row in json.loads(results.with_suffix(".json").read_text())["rows"]}
    assert set(rows) == {"semisup-100", "cluster16"}
    for key, curve_metric in (("semisup-100", "val/error"), ("cluster16", "val/cluster_error")):
        row = rows[key]
        assert row["status"] == "ok" and row["ours"] is not None and row["device"]
        assert row["curve_metric"] == curve_metric and [epoch for epoch, _ in row["curve"]] == [1, 2]
        assert (results.parent / "reproduce-curves" / f"{key}.png").stat().st_size > 0
    # The two rows trained at once: both had started before either ended.
    lines = both.stdout.splitlines()
    started = [i for i, line in enumerate(lines) if " running: aae-pipeline run " in line]
    ended = [i for i, line in enumerate(lines) if " test/" in line and " = " in line]
    assert len(started) == 2 and len(ended) == 2 and max(started) < min(ended), both.stdout

    # A window too short for the asked epochs: the row is stopped with its checkpoints, the finished row stays.
    short = reproduce("--only", "semisup-100", "--epochs", "400", "--minutes", "0.4")
    assert short.returncode == 0, short.stdout[-3000:] + short.stderr[-3000:]
    rows = {row["experiment"]: row for row in json.loads(results.with_suffix(".json").read_text())["rows"]}
    reached = epochs_logged(runs / "semisup-100")[-1]
    assert 2 <= reached < 400
    assert rows["semisup-100"]["status"].startswith("stopped at the time limit after epoch")
    assert RunDir(runs / "semisup-100").read_manifest()["stages"]["train"]["status"] == "interrupted"
    assert rows["cluster16"]["status"] == "ok" and len(rows["cluster16"]["curve"]) == 2
    assert "| cluster16 |" in results.read_text()
