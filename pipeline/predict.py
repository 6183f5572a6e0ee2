"""`aae-pipeline predict`: every output of a trained model for each image of a dataset or file, as Parquet.

One process writes one file. With workers (`--workers N` on this machine, or a cluster's with `--address`), the
images stream through Ray Data to a pool of model actors, each loading the model itself, and the result is a
folder of Parquet shards with a manifest: the same rows and values, in the same order of `index`. Either way the
output appears whole or not at all (written under a temporary name, then renamed).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.images import Images, read_images
from pipeline.errors import UserError
from pipeline.inference import TrainedAAE, load_run
from pipeline.rundir import atomic_write_text, claim_dir

MANIFEST = "_manifest.json"  # "_": Parquet readers skip it when they read the folder as one table
ROWS_PER_WRITE = 10_000  # rows scored between two Parquet writes (and progress updates); the most per shard
ACTOR_START_S = 600  # how long Ray Data may take to start the model actors


@dataclass(frozen=True)
class PredictRequest:
    """What to score and where the result goes."""

    run: Path  # a run directory or an exported model folder
    data: str  # a dataset name or an image file
    out: Path
    split: str | None = None
    data_dir: Path | None = None
    force: bool = False
    batch_size: int | None = None


def predict(request: PredictRequest, workers: int | None = None, address: str | None = None,
            gpus_per_worker: float = 0.0) -> dict[str, Any]:
    """Score every image; one Parquet file, or (with workers or an address) a folder of shards. Returns a summary
    (rows, columns, where it went)."""
    out = request.out.expanduser().resolve()
    if (out.exists() or out.is_symlink()) and not request.force:
        raise UserError(f"{out} already exists", "pick another --out, or pass --force to replace it")
    model = load_run(request.run)
    images = read_images(request.data, request.split, request.data_dir, model.image_shape)
    if workers is None and address is None:
        return _predict_here(model, images, out, request.batch_size)
    return _predict_with_ray(request, model, images, out, workers, address, gpus_per_worker)


# -- one process -----------------------------------------------------------------------------------------
def _predict_here(model: TrainedAAE, images: Images, out: Path, batch_size: int | None) -> dict[str, Any]:
    import pyarrow.parquet as pq

    from pipeline.progress import rows_progress

    if batch_size:
        model.batch_size = batch_size
    total = len(images.images)
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    started = time.perf_counter()
    try:
        writer = None
        with rows_progress(total, f"scoring {images.source}") as advance:
            for start in range(0, max(total, 1), ROWS_PER_WRITE):
                table = score_rows(model, images, start, min(start + ROWS_PER_WRITE, total))
                if writer is None:
                    writer = pq.ParquetWriter(partial, table.schema, compression="zstd")
                writer.write_table(table)
                advance(table.num_rows)
        writer.close()
        _replace(partial, out)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    seconds = time.perf_counter() - started
    return {"out": str(out), "rows": total, "columns": table.column_names, "seconds": round(seconds, 2),
            "images_per_s": round(total / seconds, 1) if seconds else None}


def score_rows(model: TrainedAAE, images: Images, start: int, stop: int) -> Any:
    """Rows start…stop of the output, as an Arrow table: index, label (where known), then the model's outputs."""
    import pyarrow as pa

    labels = None if images.labels is None else images.labels[start:stop]
    outputs = model.predict(images.images[start:stop], labels)
    columns: dict[str, Any] = {"index": pa.array(np.arange(start, stop, dtype=np.int64))}
    if labels is not None:
        columns["label"] = pa.array(labels, type=pa.int64())
    for name, values in outputs.items():
        if values.ndim == 2:  # a vector per image: a fixed-size list column, one entry per dimension
            flat = pa.array(np.ascontiguousarray(values, dtype=np.float32).reshape(-1))
            columns[name] = pa.FixedSizeListArray.from_arrays(flat, values.shape[1])
        else:
            columns[name] = pa.array(values.astype(np.float32) if values.dtype.kind == "f" else values)
    return pa.table(columns)


def _replace(partial: Path, out: Path) -> None:
    """Move a finished output into place, replacing what `--force` allowed to replace."""
    if out.is_dir() and not out.is_symlink():
        shutil.rmtree(out)
    partial.replace(out)


# -- Ray Data ---------------------------------------------------------------------------------------------
class Scorer:
    """A Ray Data actor: loads the model once, then scores a batch of row indices into a shard of its own and
    says which shard, how many rows, and on which node."""

    def __init__(self, run: str, data: str, split: str | None, data_dir: str | None, folder: str,
                 threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.model = load_run(Path(run), "cuda" if torch.cuda.is_available() else "cpu")
        self.images = read_images(data, split, Path(data_dir) if data_dir else None, self.model.image_shape)
        self.folder = Path(folder)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import pyarrow.parquet as pq
        import ray

        first, last = int(batch["data"][0]), int(batch["data"][-1])
        table = score_rows(self.model, self.images, first, last + 1)
        shard = f"part-{first:012d}.parquet"  # names sort in the order of the rows
        pq.write_table(table, self.folder / shard, compression="zstd")
        return {"shard": np.array([shard]), "rows": np.array([table.num_rows]),
                "node": np.array([ray.get_runtime_context().get_node_id()])}


def _predict_with_ray(request: PredictRequest, model: TrainedAAE, images: Images, out: Path, workers: int | None,
                      address: str | None, gpus_per_worker: float) -> dict[str, Any]:
    import ray

    from pipeline.ray import cluster

    actors = workers or 2
    plan = cluster.plan_resources(actors, gpus_per_worker, None, local=address is None)
    cluster.connect(address, plan)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    # Every actor loads its model before the first batch is handed out, and takes one batch at a time: the batches
    # spread over all of them instead of queueing at the first one ready.
    context.wait_for_min_actors_s = ACTOR_START_S
    context.max_tasks_in_flight_per_actor = 1
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # Ray Data sets up its own logging when imported
    if address:
        from pipeline.ray.nodes import check_shared

        check_shared(out.parent, "output folder")
    total = len(images.images)
    staging = claim_dir(out.with_name(f".{out.name}.partial"))
    started = time.perf_counter()
    try:
        # Row numbers made in this process (no read tasks, which would wait for the CPUs the actors hold).
        per_shard = max(1, min(ROWS_PER_WRITE, -(-total // (2 * actors))))  # at least two shards per actor
        starts = np.arange(total, dtype=np.int64)
        rows = ray.data.from_numpy([starts[i : i + per_shard] for i in range(0, total, per_shard)])
        written = _map_without_restarts(
            rows, Scorer, batch_size=per_shard, batch_format="numpy", concurrency=actors, num_cpus=plan.cpus,
            num_gpus=plan.gpus or None,
            fn_constructor_kwargs={
                "run": str(Path(request.run).resolve()), "data": _absolute(request.data), "split": request.split,
                "data_dir": str(request.data_dir.resolve()) if request.data_dir else None, "folder": str(staging),
                "threads": plan.threads,
            },
        ).take_all()
        scored_by: dict[str, int] = {}
        for shard in written:
            scored_by[str(shard["node"])] = scored_by.get(str(shard["node"]), 0) + int(shard["rows"])
        shards = sorted(str(shard["shard"]) for shard in written)
        seconds = round(time.perf_counter() - started, 2)
        manifest = {"rows": total, "shards": shards, "scored_by": scored_by, "run": str(request.run),
                    "data": request.data, "split": request.split, "seconds": seconds}
        atomic_write_text(staging / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        _replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {"out": str(out), "rows": total, "shards": len(shards), "nodes": len(scored_by), "seconds": seconds,
            "images_per_s": round(total / seconds, 1) if seconds else None}


def _map_without_restarts(rows: Any, fn: type, **options: Any) -> Any:
    """rows.map_batches(fn, **options) on actors that are not restarted: a failed actor fails the command, which
    starts over. (With restarts, Ray warns on every actor that its constructor arguments, which Ray Data keeps in
    the object store, might be gone by then.) Ray marks the switch deprecated; where it is gone, the actors get
    Ray Data's default, and the warning comes back."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return rows.map_batches(fn, ray_remote_args_fn=lambda: {"max_restarts": 0}, **options)
        except TypeError:
            return rows.map_batches(fn, **options)


def _absolute(spec: str) -> str:
    """A file spec as an absolute path (actors do not share the driver's working directory)."""
    from pipeline.data.images import is_image_file

    return str(Path(spec).expanduser().resolve()) if is_image_file(spec) else spec
