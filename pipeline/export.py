"""`aae-pipeline export`: a trained run as a self-contained model folder that `load_run` reads back.

<folder>/config.json         the variant and its params, the image shape, the run's config and test metrics
<folder>/model.safetensors   the model's weights (tensors only: nothing in it can run code when loaded)
<folder>/README.md           a short model card: what was trained on what, how well, and how to load it
"""

from __future__ import annotations

import json
import shutil
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline.config import load_config
from pipeline.errors import UserError, command
from pipeline.inference import FOLDER_CARD, FOLDER_CONFIG, FOLDER_FORMAT, FOLDER_VERSION, FOLDER_WEIGHTS, load_run
from pipeline.rundir import CONFIG_FILE, RunDir, atomic_write_bytes, atomic_write_text, claim_dir


def export_run(run_dir: Path, out: Path, force: bool = False) -> Path:
    """Write the run's model folder at `out` (whole or not at all; an existing `out` only with `force`)."""
    out = out.expanduser().resolve()
    if (out.exists() or out.is_symlink()) and not force:
        raise UserError(f"{out} already exists", "pick another --out, or pass --force to replace it")
    if not (run_dir / CONFIG_FILE).is_file():
        raise UserError(f"{run_dir} is not a run directory (no {CONFIG_FILE})",
                        "pass a directory `aae-pipeline run` made")
    staging = claim_dir(out.with_name(f".{out.name}.partial"))
    try:
        write_model_folder(Path(run_dir), staging, out.name)
        retired = out.with_name(f".{out.name}.old-{time.time_ns()}")
        if out.exists() or out.is_symlink():
            out.rename(retired)  # replaced only once the new folder is whole
        staging.rename(out)
        if retired.is_dir() and not retired.is_symlink():
            shutil.rmtree(retired, ignore_errors=True)
        elif retired.exists() or retired.is_symlink():
            retired.unlink()
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def write_model_folder(run_dir: Path, folder: Path, name: str | None = None) -> None:
    """The three files of a run's model folder, into an existing (empty) `folder` (to be called `name`)."""
    from safetensors.torch import save

    trained = load_run(run_dir)
    config = load_config(str(run_dir / CONFIG_FILE))
    manifest = RunDir(run_dir).read_manifest()
    card = {
        "format": FOLDER_FORMAT,
        "format_version": FOLDER_VERSION,
        "experiment": trained.experiment,
        "variant": config.model.variant,
        "params": config.model.params,
        "image_shape": list(trained.image_shape),
        "epoch": trained.epoch,
        "metrics": trained.metrics,
        "cluster_labels": None if trained.cluster_labels is None else trained.cluster_labels.tolist(),
        "config": trained.config,
        "trained_with": manifest.get("commands", []),
        "exported_from": str(run_dir.resolve()),
        "aae_pipeline": _version(),
    }
    weights = {name: tensor.detach().cpu().contiguous() for name, tensor in trained.model.state_dict().items()}
    atomic_write_bytes(folder / FOLDER_WEIGHTS, save(weights, metadata={"format": "pt"}))
    atomic_write_text(folder / FOLDER_CONFIG, json.dumps(card, indent=2) + "\n")
    atomic_write_text(folder / FOLDER_CARD, model_card(card, config, name or folder.name, trained.offers))


def model_card(card: dict[str, Any], config: Any, folder_name: str, offers: tuple[str, ...]) -> str:
    """README.md of a model folder: what it is, how it was trained, its test numbers beside the paper's, and how
    to load it."""
    from pipeline.report import beside_the_paper

    data = config.data
    labels = "every training label" if data.labels == "all" else f"{data.labels} labels"
    epochs = config.train.epochs
    lines = [
        f"# {card['experiment']}: {config.description or config.model.variant}",
        "",
        f"A `{config.model.variant}` model of the Adversarial Autoencoder family (Makhzani et al., 2015), trained "
        f"with aae-pipeline on `{data.dataset}` ({labels}{f', its first {data.limit} images' if data.limit else ''}) "
        f"for {epochs} epoch{'s' if epochs != 1 else ''}; these are the weights of epoch {card['epoch']}, the best "
        "by validation.",
        "",
    ]
    rows = beside_the_paper(config, card["metrics"])
    if rows:
        lines += ["| test metric | this model | the paper |", "|---|---|---|"]
        lines += [f"| {title} (`{metric}`) | {_number(ours)} | {paper} |" for title, metric, ours, paper in rows]
        lines.append("")
    if card["trained_with"]:
        lines += ["Trained with:", "", *(f"    {line}" for line in card["trained_with"]), ""]
    shape = " x ".join(str(d) for d in card["image_shape"])
    first = offers[0]
    lines += [
        f"It takes {shape} images: uint8 arrays (N, {', '.join(map(str, card['image_shape']))}), or floats in "
        f"[0, 1]. With aae-pipeline installed:",
        "",
        "    from pipeline import load_run",
        f'    model = load_run("{folder_name}")',
        f"    {_USAGE[first]}",
        "",
        f"It offers {', '.join(f'`{name}`' for name in offers)}. From the command line: "
        f"`{command('aae-pipeline predict', Path(folder_name))} --data images.npy --out predictions.parquet` "
        "writes every output for each image.",
        "",
    ]
    return "\n".join(lines)


_USAGE = {
    "classify": "probabilities = model.classify(images)  # (N, classes)",
    "cluster": "clusters, confidence = model.cluster(images)",
    "embed": "codes = model.embed(images)  # (N, code size)",
}


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _version() -> str:
    try:
        return metadata.version("aae-pipeline")
    except metadata.PackageNotFoundError:
        return "unknown"
