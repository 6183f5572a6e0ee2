"""Using a trained model: load_run on run directories and exported folders, every method, predict / sample / export
through the CLI, and bad input. Runs are trained and evaluated in-process on the tiny synthetic set (no Ray)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from aae.metrics import classification_error, cluster_error
from aae.variants import build_model
from pipeline import load_run
from pipeline.data import load_split
from pipeline.errors import UserError
from pipeline.inference import TrainedAAE
from pipeline.rundir import CONFIG_FILE, RunDir
from tests.helpers import held_by_another_process, popen_with_ctrl_c, run_cli, trained_run


@pytest.fixture(scope="module")
def runs(synthetic_dataset, tmp_path_factory) -> dict[str, RunDir]:
    root = tmp_path_factory.mktemp("runs")
    return {
        "semisup": trained_run(synthetic_dataset, root / "semisup", "semisup", "data.labels=100"),
        "cluster": trained_run(synthetic_dataset, root / "cluster", "cluster16",
                                         "model.params.n_clusters=10", "model.params.hidden=[64,64]"),
        "supervised": trained_run(synthetic_dataset, root / "supervised", "supervised"),
    }


@pytest.fixture(scope="module")
def test_split(synthetic_dataset) -> tuple[np.ndarray, np.ndarray]:
    return load_split(synthetic_dataset["data.dataset"], "test", Path(synthetic_dataset["data.data_dir"]))


def metrics_of(run: RunDir) -> dict:
    return json.loads((run.path / "evaluation.json").read_text())["metrics"]


# --- load_run and its methods ------------------------------------------------------------------------------

def test_a_loaded_run_classifies_the_test_split_to_its_recorded_error(runs, test_split) -> None:
    images, labels = test_split
    model = load_run(runs["semisup"].path)
    assert model.experiment == "semisup" and model.image_shape == (28, 28) and model.epoch >= 1
    probabilities = model.classify(images)
    assert probabilities.shape == (len(images), 10) and np.allclose(probabilities.sum(1), 1, atol=1e-5)
    assert classification_error(probabilities, labels) == metrics_of(runs["semisup"])["test/error"]
    assert model.metrics["test/error"] == metrics_of(runs["semisup"])["test/error"]
    # the per-image reconstruction error averages to the run's test/recon_bce
    assert model.reconstruction_error(images).mean() == pytest.approx(metrics_of(runs["semisup"])["test/recon_bce"],
                                                                      rel=1e-5)


def test_a_clustering_run_s_clusters_and_their_labels_give_its_cluster_error(runs, test_split) -> None:
    images, labels = test_split
    model = load_run(runs["cluster"].path)
    clusters, confidence = model.cluster(images)
    assert clusters.dtype == np.int64 and ((confidence > 0) & (confidence <= 1)).all()
    assert model.cluster_labels is not None and len(model.cluster_labels) == 10
    assert cluster_error(clusters, model.cluster_labels, labels) == metrics_of(runs["cluster"])["test/cluster_error"]


@pytest.mark.parametrize(("variant", "params", "offers"), [
    ("semi_supervised", {}, {"classify"}), ("clustering", {"n_clusters": 4}, {"cluster"}),
    ("dim_reduction", {"use_labels": False, "n_clusters": 4}, {"cluster"}), ("unsupervised", {}, set()),
    ("vae", {}, set()), ("label_regularised", {"prior": "mixture"}, set()), ("supervised", {}, set()),
])
def test_every_variant_answers_what_it_offers_and_refuses_the_rest_by_name(variant, params, offers) -> None:
    small = {"hidden": [16], **({} if variant == "vae" else {"disc_hidden": [8]}), **params}
    model = TrainedAAE(model=build_model(variant, {"input_dim": 784, **small}).eval(), config={"experiment": variant},
                       metrics={}, image_shape=(28, 28), epoch=1, source=Path("."), batch_size=7)
    images = np.random.default_rng(0).integers(0, 256, (20, 28, 28), dtype=np.uint8)
    given = {"labels": np.arange(20) % 4} if variant == "supervised" else {}  # its decoder reads the class
    assert set(model.offers) - {"embed", "encode", "reconstruct", "reconstruction_error", "decode", "sample"} == offers
    for method in {"classify", "cluster"} - offers:
        with pytest.raises(UserError, match=f"has no {method}\\(\\) — it offers {', '.join(model.offers)}"):
            getattr(model, method)(images)
    embedded = model.embed(images)
    assert embedded.shape[0] == 20
    assert model.decode(model.encode(images), **given).shape == (20, 28, 28)
    rebuilt = model.reconstruct(images, **given)
    assert rebuilt.shape == (20, 28, 28) and rebuilt.min() >= 0 and rebuilt.max() <= 1
    assert model.reconstruction_error(images, **given).shape == (20,)
    label = 3 if model.model.sample_labels else None
    assert model.sample(5, label).shape == (5, 28, 28)
    assert np.array_equal(model.sample(5, label, seed=1), model.sample(5, label, seed=1))
    columns = model.predict(images, **given)
    assert {"embedding", "reconstruction_error"} <= set(columns) and all(len(v) == 20 for v in columns.values())
    model.batch_size = 1000  # batching is invisible: 7 at a time gives what 1000 at a time gives
    assert np.allclose(model.embed(images), embedded, atol=1e-6)


def test_results_do_not_depend_on_the_batch_size_or_the_input_s_form(runs, test_split) -> None:
    images, _ = test_split
    model = load_run(runs["semisup"].path)
    whole = model.embed(images)
    model.batch_size = 64
    assert np.allclose(model.embed(images), whole, atol=1e-6)
    as_floats = torch.from_numpy(images).float() / 255  # a float tensor in [0, 1], with a channel axis
    assert np.allclose(model.embed(as_floats[:, None]), whole, atol=1e-5)
    assert model.embed(images[:0]).shape == (0, whole.shape[1])


@pytest.mark.parametrize(("images", "expected"), [
    (np.zeros((3, 28, 28, 1), np.uint8), r"shape \(3, 28, 28, 1\) do not fit this model"),
    (np.zeros((28, 28), np.uint8), "a single image needs a batch axis"),
    (np.zeros((2, 32, 32), np.uint8), r"takes \(N, 28, 28\) or \(N, 1, 28, 28\)"),
    (np.zeros((2, 28, 28), np.int64), "images of type int64 are not pixels"),
    (np.full((2, 28, 28), 255.0), "float images must lie in \\[0, 1\\]; rows from 0 hold values from 255 to 255"),
    (np.full((2, 28, 28), np.nan, np.float32), "NaN or infinite values"),
])
def test_images_a_model_cannot_read_are_one_clear_error(runs, images, expected) -> None:
    with pytest.raises(UserError, match=expected):
        load_run(runs["semisup"].path).embed(images)


def test_labels_are_checked_against_what_the_model_knows(runs) -> None:
    supervised, semisup = load_run(runs["supervised"].path), load_run(runs["semisup"].path)
    images = np.zeros((2, 28, 28), np.uint8)
    with pytest.raises(UserError, match="decoder reads each image's class label"):
        supervised.reconstruct(images)
    with pytest.raises(UserError, match=r"labels must lie in 0…9 \(found 0…12\)"):
        supervised.reconstruct(images, labels=np.array([0, 12]))
    with pytest.raises(UserError, match="label 10 is out of range .* pass a label from 0 to 9"):
        semisup.sample(4, label=10)
    unsupervised = TrainedAAE(model=build_model("unsupervised", {"input_dim": 784, "hidden": [8], "disc_hidden": [8]}),
                              config={}, metrics={}, image_shape=(28, 28), epoch=1, source=Path("."))
    with pytest.raises(UserError, match="samples from its prior alone and takes no label"):
        unsupervised.sample(4, label=1)


def test_a_supervised_model_draws_the_digit_it_is_told(runs) -> None:
    model = load_run(runs["supervised"].path)
    threes = model.sample(6, label=3, seed=0)
    assert threes.shape == (6, 28, 28) and not np.array_equal(threes, model.sample(6, label=4, seed=0))


# --- export and load_run of the folder -----------------------------------------------------------------------

LOAD_IN_A_BARE_PROCESS = """
import sys
import numpy as np
from pipeline import load_run
model = load_run(sys.argv[1])
images = np.load(sys.argv[2])
np.savez(sys.argv[3], probabilities=model.classify(images), embedding=model.embed(images),
         error=model.reconstruction_error(images), samples=model.sample(4, label=2))
heavy = sorted(name for name in ("ray", "wandb", "pipeline.loop", "pipeline.config") if name in sys.modules)
print("imported:", heavy)
"""


@pytest.mark.slow
def test_an_exported_folder_loads_without_ray_or_wandb_and_answers_as_the_run(runs, test_split, tmp_path) -> None:
    images, _ = test_split
    folder = tmp_path / "semisup-model"
    result = run_cli("export", str(runs["semisup"].path), "--out", str(folder), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    card = (folder / "README.md").read_text()
    assert "| test metric | this model | the paper |" in card and "aae-pipeline run semisup --epochs 2" in card
    assert 'load_run("semisup-model")' in card
    np.save(tmp_path / "images.npy", images)
    loaded = subprocess.run([sys.executable, "-c", LOAD_IN_A_BARE_PROCESS, str(folder), str(tmp_path / "images.npy"),
                             str(tmp_path / "out.npz")], capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "imported: []"
    there, here = np.load(tmp_path / "out.npz"), load_run(runs["semisup"].path)
    assert np.array_equal(there["probabilities"], here.classify(images))
    assert np.array_equal(there["embedding"], here.embed(images))
    assert np.array_equal(there["error"], here.reconstruction_error(images))
    assert np.array_equal(there["samples"], here.sample(4, label=2))
    again = run_cli("export", str(runs["semisup"].path), "--out", str(folder), cwd=tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr and "--force" in again.stderr


@pytest.mark.parametrize("damage", ["truncated weights", "foreign config", "missing weights"])
@pytest.mark.slow
def test_a_damaged_model_folder_is_one_line_naming_the_file(runs, tmp_path, damage) -> None:
    folder = tmp_path / "model"
    assert run_cli("export", str(runs["semisup"].path), "--out", str(folder), cwd=tmp_path).returncode == 0
    if damage == "truncated weights":
        os.truncate(folder / "model.safetensors", 100)
    elif damage == "foreign config":
        (folder / "config.json").write_text('{"architectures": ["BertModel"]}')
    else:
        (folder / "model.safetensors").unlink()
    result = run_cli("predict", str(folder), "--data", "whatever.npy", "--out", str(tmp_path / "p.parquet"),
                     cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert str(folder) in line and "Traceback" not in result.stderr


# --- the CLI --------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_predict_on_the_run_s_test_split_writes_typed_rows_that_reproduce_its_error(runs, synthetic_dataset,
                                                                                  tmp_path) -> None:
    out = tmp_path / "predictions.parquet"
    result = run_cli("predict", str(runs["semisup"].path), "--data", synthetic_dataset["data.dataset"],
                     "--data-dir", synthetic_dataset["data.data_dir"], "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    table = pq.read_table(out)
    assert table.schema.field("index").type == pa.int64() and table.schema.field("class").type == pa.int64()
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 10)
    assert table.column_names == ["index", "label", "class", "class_probability", "embedding",
                                  "reconstruction_error"]
    assert table.column("index").to_pylist() == list(range(table.num_rows))
    error = classification_error(table.column("class").to_numpy(), table.column("label").to_numpy())
    assert error == metrics_of(runs["semisup"])["test/error"]


@pytest.mark.slow
def test_predict_reads_a_user_s_npy_npz_and_parquet_images(runs, test_split, tmp_path) -> None:
    images, labels = test_split
    np.save(tmp_path / "digits.npy", images[:50])
    np.savez(tmp_path / "digits.npz", images=images[:50], labels=labels[:50])
    pq.write_table(pa.table({"image": pa.array([row.tobytes() for row in images[:50]], pa.binary(784)),
                             "label": labels[:50]}), tmp_path / "digits.parquet")
    expected = load_run(runs["cluster"].path).cluster(images[:50])[0]
    for name in ("digits.npy", "digits.npz", "digits.parquet"):
        out = tmp_path / f"{name}.out.parquet"
        result = run_cli("predict", str(runs["cluster"].path), "--data", name, "--out", str(out), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        table = pq.read_table(out)
        assert np.array_equal(table.column("cluster").to_numpy(), expected), name
        assert ("label" in table.column_names) == (name != "digits.npy")
        assert {"cluster_probability", "cluster_label", "embedding"} <= set(table.column_names)


@pytest.mark.parametrize(("args", "expected"), [
    (["--data", "nowhere.npy"], "image file .*nowhere.npy does not exist"),
    (["--data", "strings.npy"], "is not a numeric .npy array"),
    (["--data", "rgb.npy"], "this model takes grey images: convert colour ones to grey first"),
    (["--data", "digits.npy", "--split", "train"], "--split train names a split of a dataset"),
    (["--data", "digits.npy", "--out", "taken.parquet"], "taken.parquet already exists"),
    (["--data", "cifar10"], "unknown dataset 'cifar10'"),
])
@pytest.mark.slow
def test_predict_refuses_bad_input_in_one_line_and_writes_nothing(runs, tmp_path, args, expected) -> None:
    np.save(tmp_path / "digits.npy", np.zeros((4, 28, 28), np.uint8))
    np.save(tmp_path / "strings.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "rgb.npy", np.zeros((4, 28, 28, 3), np.uint8))
    (tmp_path / "taken.parquet").write_text("mine")
    out = [] if "--out" in args else ["--out", "new.parquet"]
    result = run_cli("predict", str(runs["semisup"].path), *args, *out, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert re.search(expected, line), line
    assert not (tmp_path / "new.parquet").exists() and (tmp_path / "taken.parquet").read_text() == "mine"
    assert not [path for path in tmp_path.iterdir() if ".partial" in path.name]


@pytest.mark.slow
def test_ctrl_c_during_predict_leaves_no_output(runs, tmp_path) -> None:
    np.save(tmp_path / "many.npy", np.zeros((60_000, 28, 28), np.uint8))
    process = popen_with_ctrl_c(
        [sys.executable, "-m", "pipeline.cli", "predict", str(runs["semisup"].path), "--data", "many.npy", "--out",
         "p.parquet"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 120
    while not [path for path in tmp_path.iterdir() if ".partial" in path.name]:  # scoring has begun
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["many.npy"]


@pytest.mark.slow
def test_sample_writes_a_picture_or_the_arrays_and_refuses_a_label_it_cannot_take(runs, tmp_path) -> None:
    png = run_cli("sample", str(runs["supervised"].path), "--n", "12", "--label", "7", "--out", "sevens.png",
                  cwd=tmp_path)
    assert png.returncode == 0, png.stderr
    assert (tmp_path / "sevens.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    npy = run_cli("sample", str(runs["cluster"].path), "--n", "5", "--out", "s.npy", cwd=tmp_path)
    assert npy.returncode == 0 and np.load(tmp_path / "s.npy").shape == (5, 28, 28)
    for args, expected in ((["--label", "10"], "pass a label from 0 to 9"), (["--out", "s.jpg"], "neither .png")):
        out = [] if "--out" in args else ["--out", "x.png"]
        refused = run_cli("sample", str(runs["supervised"].path), *args, *out, cwd=tmp_path)
        assert refused.returncode == 2 and expected in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1


def test_load_run_refuses_what_holds_no_model(synthetic_dataset, runs, tmp_path) -> None:
    with pytest.raises(UserError, match="neither a run directory .* nor an exported model folder"):
        load_run(tmp_path)
    untrained = tmp_path / "untrained"
    untrained.mkdir()
    (untrained / CONFIG_FILE).write_text((runs["semisup"].path / CONFIG_FILE).read_text())
    with pytest.raises(UserError, match="has no trained checkpoint"):
        load_run(untrained)
    RunDir(untrained).metrics_path.write_text('{"diverged": 1, "losses": {"train/recon_loss": NaN}}\n')
    with pytest.raises(UserError, match="training diverged in epoch 1, before any checkpoint"):
        load_run(untrained)
    damaged = tmp_path / "damaged"
    shutil.copytree(runs["semisup"].path, damaged)
    os.truncate(damaged / "checkpoints" / "best.pt", 1000)
    with pytest.raises(UserError, match=r"best.pt is damaged \(not a complete checkpoint.* retrain it"):
        load_run(damaged)


def test_load_run_refuses_a_run_that_is_still_training(runs, tmp_path) -> None:
    training = tmp_path / "training"
    shutil.copytree(runs["semisup"].path, training)
    RunDir(training).record_stage("train", status="running")
    with held_by_another_process(training) as holder, \
            pytest.raises(UserError, match=f"is still training \\(pid {holder.pid} on"):
        load_run(training)
    assert load_run(training).epoch >= 1  # its driver gone, what it left is loadable
