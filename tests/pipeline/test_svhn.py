"""SVHN end to end on synthetic .mat files of the official layout: prepare, one-line errors, the conv
experiment through `run` → evaluate → visualize → report, and the reproduction row without data."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from scipy.io import loadmat, savemat

from pipeline import cli
from pipeline.config import load_config
from pipeline.data import image_shape, load_label_split, load_split, prepare_dataset
from pipeline.errors import UserError
from pipeline.report import print_report
from pipeline.rundir import RunDir
from pipeline.stages.prepare import prepare
from tests.conftest import tiny_overrides
from tests.helpers import run_cli
from tests.synthetic import synthetic_house_numbers, write_synthetic_svhn_dir
from tests.wandb_offline import find_offline_runs


def test_prepare_writes_channel_first_colour_with_label_10_as_digit_0(tmp_path) -> None:
    mat_dir = write_synthetic_svhn_dir(tmp_path / "mat", n_train=120, n_test=60)
    source, data_dir = f"svhn:{mat_dir}", tmp_path / "data"
    prepare_dataset(source, data_dir)
    raw = loadmat(mat_dir / "train_32x32.mat")
    train_x, train_y = load_split(source, "train", data_dir)
    val_x, val_y = load_split(source, "validation", data_dir)
    assert image_shape(source, data_dir) == (3, 32, 32)
    assert train_x.dtype == np.uint8 and train_x.shape == (100, 3, 32, 32) and val_x.shape == (20, 3, 32, 32)
    # Pixel (row 5, column 7) of image 3 keeps its three channels; validation is train_32x32.mat's tail.
    assert np.array_equal(train_x[3, :, 5, 7], raw["X"][5, 7, :, 3])
    assert np.array_equal(val_x[0], raw["X"][..., 100].transpose(2, 0, 1))
    mat_labels = raw["y"].reshape(-1).astype(np.int64)
    assert 10 in mat_labels and set(np.unique(train_y)) == set(range(10))
    assert np.array_equal(np.concatenate([train_y, val_y]), np.where(mat_labels == 10, 0, mat_labels))
    assert len(load_split(source, "test", data_dir)[1]) == 60


def test_labelled_subset_is_balanced_and_seeded(synthetic_svhn) -> None:
    source, data_dir = synthetic_svhn["data.dataset"], Path(synthetic_svhn["data.data_dir"])
    labels = load_split(source, "train", data_dir)[1]
    picked = load_label_split(source, 100, 0, data_dir)
    assert np.array_equal(np.bincount(labels[picked], minlength=10), np.full(10, 10))
    assert np.array_equal(picked, load_label_split(source, 100, 0, data_dir))
    assert not np.array_equal(picked, load_label_split(source, 100, 1, data_dir))


def test_the_extra_set_joins_the_training_split(tmp_path) -> None:
    mat_dir = write_synthetic_svhn_dir(tmp_path / "mat", n_train=60, n_test=20, n_extra=30)
    prepare_dataset(f"svhn:{mat_dir}", tmp_path / "data")
    train_x, _ = load_split(f"svhn:{mat_dir}", "train", tmp_path / "data")
    extra = loadmat(mat_dir / "extra_32x32.mat")["X"]
    assert len(train_x) == 50 + 30 and np.array_equal(train_x[-1], extra[..., -1].transpose(2, 0, 1))


def test_a_corrupted_prepared_split_is_caught_by_its_checksum(tmp_path) -> None:
    mat_dir = write_synthetic_svhn_dir(tmp_path / "mat", n_train=60, n_test=20)
    folder = prepare_dataset(f"svhn:{mat_dir}", tmp_path / "data")
    blob = bytearray((folder / "test.parquet").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (folder / "test.parquet").write_bytes(bytes(blob))
    with pytest.raises(UserError, match="does not match its checksum"):
        load_split(f"svhn:{mat_dir}", "test", tmp_path / "data")


def _break(mat_dir: Path, how: str) -> None:
    train = mat_dir / "train_32x32.mat"
    images, labels = synthetic_house_numbers(40, 0)
    if how == "wrong key":
        savemat(train, {"images": images, "y": labels})
    elif how == "wrong shape":
        savemat(train, {"X": images[:28, :28], "y": labels})
    elif how == "wrong label count":
        savemat(train, {"X": images, "y": labels[:30]})
    elif how == "label 0":
        savemat(train, {"X": images, "y": np.where(labels == 10, 0, labels)})
    elif how == "truncated":
        train.write_bytes(train.read_bytes()[:5000])
    elif how == "not a mat file":
        train.write_bytes(b"<html>404 Not Found</html>")
    elif how == "missing test file":
        (mat_dir / "test_32x32.mat").unlink()


BROKEN = {
    "wrong key": "has no variable X (found: images, y)",
    "wrong shape": "holds X of shape (28, 28, 3, 40)",
    "wrong label count": "holds y of shape (30, 1) for 40 images",
    "label 0": "has label 0; SVHN labels are 1..10",
    "truncated": "train_32x32.mat cannot be read",
    "not a mat file": "train_32x32.mat cannot be read",
    "missing test file": "test_32x32.mat is missing",
}


@pytest.mark.parametrize("how", sorted(BROKEN))
def test_a_broken_mat_dir_is_one_line_exit_2_and_keeps_the_prepared_copy(how: str, tmp_path, capsys,
                                                                         monkeypatch) -> None:
    mat_dir = write_synthetic_svhn_dir(tmp_path / "mat", n_train=60, n_test=20)
    source, data_dir = f"svhn:{mat_dir}", tmp_path / "data"
    prepare_dataset(source, data_dir)
    before = load_split(source, "train", data_dir)[0]
    _break(mat_dir, how)
    monkeypatch.setattr(sys, "argv", ["aae-pipeline", "data", "prepare", source, "--force", "--data-dir",
                                      str(data_dir)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert BROKEN[how] in err and "Traceback" not in err
    assert np.array_equal(load_split(source, "train", data_dir)[0], before)  # the earlier copy is intact
    assert not [p for p in data_dir.iterdir() if p.name.startswith((".partial", ".old"))]


def test_a_missing_svhn_dir_is_one_line_through_the_real_cli(tmp_path) -> None:
    result = run_cli("data", "prepare", f"svhn:{tmp_path / 'nowhere'}", "--data-dir", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "SVHN directory" in result.stderr and "does not exist" in result.stderr


def test_the_svhn_experiment_refuses_grey_28x28_data_at_prepare(synthetic_dataset, tmp_path) -> None:
    config = load_config("semisup-svhn", tiny_overrides(synthetic_dataset, "data.labels=100"))
    with pytest.raises(UserError, match="take 3072-value images .* has 28x28 images"):
        prepare(config, RunDir(tmp_path))


def test_the_svhn_experiment_is_listed_and_knows_svhns_size() -> None:
    from pipeline.config import list_experiments

    assert "semisup-svhn" in list_experiments()
    with pytest.raises(UserError, match="63257 training examples"):
        load_config("semisup-svhn", ["data.labels=70000"])


@pytest.mark.slow
def test_synthetic_svhn_chain_prepare_run_evaluate_visualize_report(ray_cluster, synthetic_svhn, tmp_path, capsys,
                                                                  monkeypatch) -> None:
    run_dir = tmp_path / "run"
    sets = [arg for o in tiny_overrides(synthetic_svhn, "data.labels=100", "train.batch_size=50")
            for arg in ("--set", o)]
    result = ray_cluster.cli("run", "semisup-svhn", "--workers", "1", "--epochs", "1", "--run-dir", str(run_dir),
                             "--address", ray_cluster.address, "--wandb", "offline", *sets, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert all(stage["status"] == "done" for stage in manifest["stages"].values()), manifest["stages"]
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    assert 0 <= evaluation["metrics"]["test/error"] <= 100
    assert [row[0] for row in evaluation["tables"]["per_class_error"]["rows"]] == list(range(10))
    assert "test/parzen_ll" not in evaluation["metrics"] and "not measured" in evaluation["notes"]["parzen"]
    for figure in ("samples", "style_grid", "codes", "curves"):
        assert (run_dir / "figures" / f"{figure}.png").is_file()
    # The style grid shows the colour test images themselves: its channels differ (a grey mosaic's would not).
    grid = imread(run_dir / "figures" / "style_grid.png")[..., :3]
    assert np.abs(grid[..., 0] - grid[..., 2]).max() > 0.2
    # The track stage logged the colour figures as W&B images (offline here).
    logged = {key for offline in find_offline_runs(run_dir / "wandb").values() for row in offline.history
              for key in row}
    assert {"figures/samples/path", "figures/style_grid/path"} <= logged
    monkeypatch.setenv("COLUMNS", "250")
    print_report([run_dir])
    lines = capsys.readouterr().out.splitlines()
    ours = next(line for line in lines if "SVHN, 100 labels" in line)
    assert "run" in ours and f"{evaluation['metrics']['test/error']:.2f}" in ours
    paper = next(line for line in lines if "SVHN, 1000 labels" in line)
    assert "17.70 ± 0.30" in paper and "47.50" in paper and "16.61 ± 0.24" in paper
