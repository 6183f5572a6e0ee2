"""The visualize stage: every variant gets its paper figures as valid PNGs, written whole."""

from __future__ import annotations

import json
import math

import pytest
from matplotlib.image import imread

from aae.variants import build_model
from pipeline.config import config_to_yaml, load_config
from pipeline.errors import UserError
from pipeline.loop import optim_config, save_checkpoint
from pipeline.rundir import CONFIG_FILE, RunDir
from pipeline.stages.visualize import visualize
from tests.conftest import tiny_overrides

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# experiment -> the figures it must produce (the curves need metrics.jsonl, which every run here has).
EXPECTED = {
    "unsup-gaussian": {"codes", "prior_grid", "samples", "curves"},
    "labelreg-swissroll": {"codes", "prior_grid", "samples", "curves"},  # the non-Gaussian prior grid
    "vae-mixture": {"codes", "prior_grid", "samples", "curves"},
    "supervised": {"codes", "style_grid", "samples", "curves"},
    "semisup": {"codes", "style_grid", "samples", "curves"},
    "cluster16": {"codes", "cluster_heads", "samples", "curves"},
    "dimred-2d-unsup": {"dimred_map", "samples", "curves"},
    "dimred-10d": {"dimred_map", "samples", "curves"},  # drawn in 2-D through PCA
}


def checkpointed_run(dataset: dict[str, str], directory, experiment: str, *extra: str):
    """A run directory holding an (untrained) best checkpoint and two epochs of metrics, as training leaves it.

    Figures depend on the checkpoint's weights, not on how well they were trained, so no training is needed."""
    overrides = tiny_overrides(dataset, "data.labels=100", *extra)
    if experiment.startswith("vae"):  # the VAE has no discriminator to shrink
        overrides = [o for o in overrides if "disc_hidden" not in o]
    config = load_config(experiment, overrides)
    directory.mkdir(parents=True)
    (directory / CONFIG_FILE).write_text(config_to_yaml(config))
    run = RunDir(directory)
    model = build_model(config.model.variant, {"input_dim": 784, **config.model.params})
    model.configure_optimizers(optim_config(config))
    rows = [{"train/recon_loss": 200.0 - e, "train/disc_loss": 0.69, "val/recon_bce": 150.0 - e, "epoch": e}
            for e in (1, 2)]
    save_checkpoint(model, run, epoch=1, metrics=rows[-1], best=math.inf)
    run.metrics_path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return config, run


@pytest.mark.parametrize("experiment", sorted(EXPECTED))
def test_each_variant_gets_its_figures_as_valid_pngs(synthetic_dataset, tmp_path, experiment: str) -> None:
    config, run = checkpointed_run(synthetic_dataset, tmp_path / "run", experiment)
    figures = visualize(config, run)["figures"]
    assert set(figures) == EXPECTED[experiment]
    for name, relative in figures.items():
        path = run.path / relative
        assert relative == f"figures/{name}.png"
        assert path.read_bytes().startswith(PNG_SIGNATURE)
        height, width, _ = imread(path).shape
        assert height > 300 and width > 300
    # Written atomically: nothing but the finished figures is left in the folder.
    assert sorted(p.name for p in (run.path / "figures").iterdir()) == sorted(f"{n}.png" for n in figures)


def test_prior_grid_is_skipped_for_codes_that_are_not_2d(synthetic_dataset, tmp_path) -> None:
    config, run = checkpointed_run(synthetic_dataset, tmp_path / "run", "unsup-gaussian", "model.params.z_dim=8")
    figures = visualize(config, run)["figures"]
    assert "prior_grid" not in figures
    assert "codes" in figures  # 8-D codes are still drawn, projected


def test_training_curves_are_skipped_without_metrics(synthetic_dataset, tmp_path) -> None:
    config, run = checkpointed_run(synthetic_dataset, tmp_path / "run", "unsup-gaussian")
    run.metrics_path.unlink()
    assert "curves" not in visualize(config, run)["figures"]


def test_a_run_without_checkpoint_is_a_user_error(synthetic_dataset, tmp_path) -> None:
    config = load_config("semisup", tiny_overrides(synthetic_dataset))
    with pytest.raises(UserError, match="no trained checkpoint"):
        visualize(config, RunDir(tmp_path))
