"""`aae-pipeline report`: the paper's numbers, each run's number in the row its config belongs to, clean errors."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import pytest

from pipeline import cli
from pipeline.config import config_to_yaml, load_config
from pipeline.errors import UserError
from pipeline.report import PAPER_TABLES, print_report
from pipeline.rundir import CONFIG_FILE


def fake_run(directory: Path, experiment: str, overrides: list[str], metrics: dict[str, float], epochs: int = 3,
             best: int = 2) -> Path:
    """A run directory as `run` + `eval` leave it: config, one metrics row per epoch, evaluation.json."""
    directory.mkdir(parents=True)
    (directory / CONFIG_FILE).write_text(config_to_yaml(load_config(experiment, overrides)))
    (directory / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e}) + "\n" for e in range(1, epochs + 1)))
    evaluation = {"metrics": metrics, "tables": {}, "checkpoint": {"file": "checkpoints/best.pt", "epoch": best}}
    (directory / "evaluation.json").write_text(json.dumps(evaluation))
    return directory


def report_lines(run_dirs: list[Path], capsys, monkeypatch) -> list[str]:
    monkeypatch.setenv("COLUMNS", "250")  # wide enough that no table row wraps
    print_report(run_dirs)
    return capsys.readouterr().out.splitlines()


def row_of(lines: list[str], setting: str) -> str:
    (row,) = [line for line in lines if line.strip("│ ").startswith(setting)]
    return row


def test_each_run_lands_in_its_settings_row_beside_the_papers_numbers(tmp_path, capsys, monkeypatch) -> None:
    runs = [
        fake_run(tmp_path / "semi-100", "semisup", ["data.labels=100"], {"test/error": 12.345}, epochs=7, best=5),
        fake_run(tmp_path / "clu-30", "cluster30", [], {"test/cluster_error": 40.5, "test/nmi": 0.61}),
        fake_run(tmp_path / "dr-10d", "dimred-10d", [], {"test/dimred_error": 8.25}),
        fake_run(tmp_path / "dr-unsup", "dimred-2d-unsup", [], {"test/dimred_error": 30.0, "test/parzen_ll": 101.5}),
    ]
    lines = report_lines(runs, capsys, monkeypatch)
    semi = row_of(lines, "100 labels")
    assert "25.80" in semi and "3.33 ± 0.14" in semi and "1.90 ± 0.10" in semi
    assert "semi-100" in semi and "12.35" in semi and "7 (best 5)" in semi
    assert "semi-100" not in row_of(lines, "1000 labels") and "1.60 ± 0.08" in row_of(lines, "1000 labels")
    assert "0.85 ± 0.02" in row_of(lines, "all labels")
    assert "clu-30" in row_of(lines, "30 clusters") and "40.50" in row_of(lines, "30 clusters")
    assert "0.610" in row_of(lines, "30 clusters") and "9.55" in row_of(lines, "16 clusters")
    assert "dr-10d" in row_of(lines, "10-D, 100 labels") and "8.25" in row_of(lines, "10-D, 100 labels")
    assert "3.90" in row_of(lines, "10-D, 100 labels")
    assert "dr-unsup" in row_of(lines, "2-D, 20 clusters, no labels") and "13.95" in row_of(
        lines, "2-D, 20 clusters, no labels")
    assert "340 ± 2" in row_of(lines, "MNIST, unsupervised")
    assert "101.50" in row_of(lines, "MNIST, dim_reduction")


def test_a_setting_the_paper_did_not_run_gets_its_own_row(tmp_path, capsys, monkeypatch) -> None:
    run = fake_run(tmp_path / "semi-500", "semisup", ["data.labels=500"], {"test/error": 4.0})
    row = row_of(report_lines([run], capsys, monkeypatch), "500 labels")
    assert "semi-500" in row and "4.00" in row
    assert row.count("—") == 4  # no NN baseline, VAE, ADGM or AAE number for 500 labels


def test_two_runs_of_one_setting_get_a_row_each(tmp_path, capsys, monkeypatch) -> None:
    runs = [fake_run(tmp_path / name, "semisup", [], {"test/error": err}) for name, err in (("a", 3.0), ("b", 5.0))]
    lines = report_lines(runs, capsys, monkeypatch)
    first = lines.index(row_of(lines, "1000 labels"))
    assert "3.00" in lines[first] and "5.00" in lines[first + 1] and "1.60" not in lines[first + 1]


def test_in_80_columns_the_report_keeps_the_paper_s_aae_number_and_ours_unwrapped(tmp_path, capsys,
                                                                                  monkeypatch) -> None:
    runs = [fake_run(tmp_path / "semisup-20261207-101500", "semisup", ["data.labels=100"], {"test/error": 12.345}),
            fake_run(tmp_path / "cluster30-20261207-111500", "cluster30", [], {"test/cluster_error": 40.5})]
    monkeypatch.setenv("COLUMNS", "80")
    print_report(runs)
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= 80
    semi = row_of(lines, "100 labels")
    assert semi.split() == ["100", "labels", "1.90", "±", "0.10", "12.35", "3", "(best", "2)",
                            "semisup-20261207-101500"]
    assert any(line.startswith("(left out to fit 80 columns: NN baseline") for line in lines)


def test_report_as_markdown_csv_and_json_holds_every_column(tmp_path, capsys) -> None:
    run = fake_run(tmp_path / "semi", "semisup", ["data.labels=100"], {"test/error": 12.345})
    print_report([run], "markdown")
    markdown = capsys.readouterr().out
    assert "| setting | paper AAE | ours | epochs | run | NN baseline | VAE M1+M2 | ADGM |" in markdown
    assert "| 100 labels | 1.90 ± 0.10 | 12.35 | 3 (best 2) | semi | 25.80 | 3.33 ± 0.14 | 0.96 ± 0.02 |" in markdown
    print_report([run], "csv")
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert ["Semi-supervised classification, MNIST and SVHN (test error %)", "100 labels", "1.90 ± 0.10", "12.35",
            "3 (best 2)", "semi", "25.80", "3.33 ± 0.14", "0.96 ± 0.02"] in rows
    print_report([run], "json")
    [semisup, *_] = json.loads(capsys.readouterr().out)
    assert semisup["rows"][0]["ours"] == "12.35" and semisup["rows"][0]["ADGM"] == "0.96 ± 0.02"
    with pytest.raises(UserError, match="unknown --format 'html'"):
        print_report([run], "html")


def test_paper_numbers_live_in_one_structure_with_one_value_per_method() -> None:
    for table in PAPER_TABLES:
        assert all(len(values) == len(table.methods) for values in table.paper.values())
    semi = next(t for t in PAPER_TABLES if t.metric == "test/error")
    assert semi.paper["100 labels"][-1] == "1.90 ± 0.10"


def test_a_path_that_is_not_a_run_is_a_user_error(tmp_path) -> None:
    with pytest.raises(UserError, match="not a run directory") as err:
        print_report([tmp_path / "nowhere"])
    assert str(tmp_path / "nowhere") in err.value.message


def test_an_unevaluated_run_names_the_eval_command(tmp_path) -> None:
    run = fake_run(tmp_path / "run", "semisup", [], {})
    (run / "evaluation.json").unlink()
    with pytest.raises(UserError) as err:
        print_report([run])
    assert f"aae-pipeline eval {run}" in err.value.fix


def test_cli_report_on_a_bad_dir_prints_one_line_and_exits_2(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["aae-pipeline", "report", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "not a run directory" in err and len(err.splitlines()) == 1


def test_a_run_without_the_key_in_its_params_lands_in_the_row_of_the_variants_default(
    tmp_path, capsys, monkeypatch
) -> None:
    experiment = tmp_path / "plain-clustering.yaml"
    experiment.write_text("description: clustering at the model's default size\nmodel:\n  variant: clustering\n")
    run = fake_run(tmp_path / "clu-default", str(experiment), [], {"test/cluster_error": 20.25})
    assert "clu-default" in row_of(report_lines([run], capsys, monkeypatch), "16 clusters")
