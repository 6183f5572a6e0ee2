"""The training loop every worker runs (Ray Train worker, Tune trial or plain process): data shard, epochs,
validation, checkpoints. It knows nothing of Ray; the runner passes in rank, world size and a report function."""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from aae.batch import Batch
from aae.metrics import (
    category_usage,
    classification_error,
    cluster_error_majority,
    reconstruction_errors,
    spread_ratio,
)
from aae.optim import OptimConfig
from aae.variants import build_model
from aae.variants.base import AAEModel
from pipeline.checkpoints import (
    checkpoint_bytes,
    epoch_checkpoints,
    read_checkpoint,
    reconcile_metrics,
    write_checkpoint,
)
from pipeline.config import Config
from pipeline.cuda_graphs import CapturedSteps
from pipeline.data.splits import TrainingData, load_training_data
from pipeline.rundir import DIVERGED, RunDir, atomic_write_text

ReportFn = Callable[[dict[str, float]], None]


@dataclass
class WorkerContext:
    """Where this process sits in the data-parallel group and what it runs on."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")


def optim_config(config: Config) -> OptimConfig:
    """The aae optimiser settings from the run config's train section (a phase left null takes its default)."""
    train = config.train
    return OptimConfig(
        kind=train.optimizer,
        lr=train.lr.model_dump(exclude_none=True),
        momentum=train.momentum.model_dump(exclude_none=True),
        clip_grad_norm=train.clip_grad_norm.model_dump(exclude_none=True),
        decay_epochs=tuple(train.decay_epochs),
        decay_factor=train.decay_factor,
    )


def build_training_model(config: Config, data: TrainingData) -> AAEModel:
    """The configured variant with its per-phase optimisers, sized to the data."""
    params = {"input_dim": data.x.shape[1], **config.model.params}
    model = build_model(config.model.variant, params)
    model.configure_optimizers(optim_config(config))
    return model


def uses_cuda_graphs(config: Config, device: torch.device) -> bool:
    """Whether training steps replay as CUDA graphs: on CUDA unless run.cuda_graphs is off."""
    return device.type == "cuda" and config.run.cuda_graphs


def train_loop(config: Config, run: RunDir, ctx: WorkerContext, report: ReportFn | None = None) -> dict[str, float]:
    """Train from the last checkpoint in the run directory (or from scratch) to config.train.epochs."""
    training = Training(config, run, ctx, report)
    while not training.done:
        training.train_epoch()
    training.finish()
    return training.last


class Training:
    """One run's training, an epoch at a time: its model, data and place (restored from the run directory's last
    checkpoint), and what each epoch does after the steps (validate, checkpoint, log, report).

    train_loop drives one to the end; pipeline.pack drives several in one process, an epoch of each in turn."""

    def __init__(self, config: Config, run: RunDir, ctx: WorkerContext, report: ReportFn | None = None) -> None:
        self.config, self.run, self.ctx, self.report = config, run, ctx, report
        graphs = uses_cuda_graphs(config, ctx.device)
        # A captured step gathers its batch on the device, so CUDA graphs bring the training split there too.
        self.data = load_training_data(config, ctx.device if config.run.data_on_device or graphs else None)
        # The same seed on every rank: data-parallel workers must start from identical weights.
        torch.manual_seed(config.train.seed)
        self.model = build_training_model(config, self.data).to(ctx.device)
        if ctx.world > 1:
            self.model.grad_sync = average_gradients
        self.epoch, self.best = restore_latest_checkpoint(self.model, run, config, ctx.device)  # the next epoch
        self.start_epoch = self.epoch
        if self.epoch and ctx.rank == 0:
            unlogged = reconcile_metrics(run)
            # Checkpointed before the process stopped but never reported. Reported here only where this process
            # is the only worker: Ray Train waits for a report from every rank, and only rank 0 knows of this row.
            if unlogged is not None and report is not None and ctx.world == 1:
                report(unlogged)
        self.captured = captured_steps(self.model, self.data, config, ctx) if graphs else None
        self.diverged = False
        self.last: dict[str, float] = {}

    @property
    def done(self) -> bool:
        """Every epoch trained, or training stopped on non-finite losses."""
        return self.diverged or self.epoch >= self.config.train.epochs

    def train_epoch(self) -> dict[str, float] | None:
        """Train the next epoch, then validate, checkpoint, log and report it; None when its losses were not
        finite (training stops there, see done)."""
        config, run, ctx, epoch = self.config, self.run, self.ctx, self.epoch
        started = time.perf_counter()
        progress = StepProgress(run, epoch + 1, config.train.batch_size) if ctx.rank == 0 else None
        losses = train_one_epoch(self.model, self.data, config, ctx, epoch, self.captured, progress=progress)
        if not all(math.isfinite(value) for value in losses.values()):
            # Every rank sees the same averaged losses, so all stop here together. The epoch is not
            # checkpointed: the best and last checkpoints stay the last finite ones.
            if ctx.rank == 0:
                log_metrics(run, {DIVERGED: epoch + 1, "losses": losses})
            self.diverged = True
            return None
        trained = time.perf_counter()
        last = {**losses, **validate(self.model, self.data, ctx)}
        last["epoch"] = epoch + 1
        last["time/epoch_s"] = round(time.perf_counter() - started, 3)
        last["time/train_s"] = round(trained - started, 3)
        last["time/examples_per_s"] = round(_examples_per_epoch(config, self.data) / (trained - started), 1)
        if self.captured is not None:
            last["time/cuda_graphs"] = float(self.captured.captured)
            if ctx.rank == 0 and epoch == self.start_epoch and self.captured.eager_reason:
                print(f"CUDA graphs off for this run, training eagerly: {self.captured.eager_reason}", flush=True)
        if ctx.rank == 0:
            self.best = save_checkpoint(self.model, run, epoch, last, self.best)
            log_metrics(run, last)
        if self.report is not None:
            self.report(last)
        self.epoch, self.last = epoch + 1, last
        return last

    def finish(self) -> None:
        """Clear the in-epoch progress file once training stops."""
        if self.ctx.rank == 0:
            self.run.progress_path.unlink(missing_ok=True)


class StepProgress:
    """Rank 0's way through an epoch, written to the run directory every few seconds: the driver shows it (a live
    line on a terminal, a line a minute in a log) while an epoch of minutes runs."""

    EVERY_S = 3.0

    def __init__(self, run: RunDir, epoch: int, examples_per_step: int) -> None:
        self.run, self.epoch, self.examples_per_step = run, epoch, examples_per_step
        self.started = time.perf_counter()
        self.written = self.started

    def __call__(self, step: int, steps: int) -> None:
        now = time.perf_counter()
        if now - self.written < self.EVERY_S or step == steps:
            return
        self.written = now
        rate = step * self.examples_per_step / (now - self.started)
        left = (steps - step) * (now - self.started) / step
        atomic_write_text(self.run.progress_path, json.dumps(
            {"epoch": self.epoch, "step": step, "steps": steps, "examples_per_s": round(rate, 1),
             "seconds_left": round(left, 1)}))


def log_metrics(run: RunDir, row: dict[str, Any]) -> None:
    """Append one row to metrics.jsonl, the run's record of training that the driver follows (rank 0 only)."""
    with run.metrics_path.open("a") as log:
        log.write(json.dumps(row) + "\n")


def _examples_per_epoch(config: Config, data: TrainingData) -> int:
    return (len(data.x) // config.train.batch_size) * config.train.batch_size


def epoch_batches(data: TrainingData, config: Config, ctx: WorkerContext, epoch: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """This worker's batches of one epoch: (steps, batch) row indices and (steps, labelled batch) indices of
    labelled rows, on the data's device.

    Every rank draws the same permutation (seeded by epoch) and takes a strided slice of each global batch,
    so the workers together step through exactly the batches a single process would."""
    global_batch, labelled_batch = config.train.batch_size, config.train.labelled_batch_size
    steps = len(data.x) // global_batch
    order = torch.randperm(len(data.x), generator=_generator(config.train.seed, epoch))
    rows = order[: steps * global_batch].view(steps, global_batch)[:, ctx.rank :: ctx.world]
    labelled = _labelled_stream(data, config, epoch)[: steps * labelled_batch]
    labelled_rows = labelled.view(steps, labelled_batch)[:, ctx.rank :: ctx.world]
    return rows.to(data.x.device), labelled_rows.to(data.x.device)


def captured_steps(model: AAEModel, data: TrainingData, config: Config, ctx: WorkerContext,
                   capture: bool = True) -> CapturedSteps:
    """The CUDA-graph runner for this model and data (capture=False: the same buffers, replayed eagerly)."""
    steps = len(data.x) // config.train.batch_size
    per_rank = (len(range(ctx.rank, config.train.batch_size, ctx.world)),  # the shapes epoch_batches gives
                len(range(ctx.rank, config.train.labelled_batch_size, ctx.world)))
    return CapturedSteps(model, functools.partial(make_batch, model, data), (steps, per_rank[0]),
                         (steps, per_rank[1]), data.x.device, amp=config.run.amp, capture=capture)


def train_one_epoch(model: AAEModel, data: TrainingData, config: Config, ctx: WorkerContext, epoch: int,
                    captured: CapturedSteps | None = None, progress: StepProgress | None = None
                    ) -> dict[str, float]:
    """One pass over this worker's shard; returns the losses averaged over steps and workers. `progress` hears of
    every step (eagerly trained epochs only: a replayed CUDA-graph epoch takes about a second)."""
    # Prior draws and noise come from the model's RNG, reseeded from (seed, epoch, rank): each rank draws
    # its own samples, and a run resumed at an epoch boundary repeats exactly what it would have drawn.
    model.generator.manual_seed(config.train.seed * 1_000_003 + epoch * 1009 + ctx.rank)
    rows, labelled_rows = epoch_batches(data, config, ctx, epoch)
    model.train()
    if captured is not None:
        means = captured.run_epoch(rows, labelled_rows)
    else:
        # Summed on the model's device and read once at the end: reading a loss waits for the device.
        sums: dict[str, torch.Tensor] = {}
        for step in range(len(rows)):
            batch = make_batch(model, data, rows[step], labelled_rows[step]).to(ctx.device)
            with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=config.run.amp):
                losses = model.training_step(batch)
            for key, loss in losses.items():
                sums[key] = sums[key] + loss.double() if key in sums else loss.double()
            if progress is not None:
                progress(step + 1, len(rows))
        means = {key: float(total) / max(len(rows), 1) for key, total in sums.items()}
    model.end_epoch(epoch)
    return _average_across_workers({f"train/{key}": value for key, value in means.items()}, ctx)


def _generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 7919 + epoch)


def _labelled_stream(data: TrainingData, config: Config, epoch: int) -> torch.Tensor:
    """Enough shuffled passes over the labelled subset to give every step its labelled batch."""
    needed = (len(data.x) // config.train.batch_size + 1) * config.train.labelled_batch_size
    passes = needed // len(data.labelled) + 1
    gen = _generator(config.train.seed + 1, epoch)
    chunks = [data.labelled[torch.randperm(len(data.labelled), generator=gen)] for _ in range(passes)]
    return torch.cat(chunks)[:needed]


def make_batch(model: AAEModel, data: TrainingData, idx: torch.Tensor, lab: torch.Tensor) -> Batch:
    """The batch a variant asks for: no labels, the labelled subset's labels (-1 elsewhere), or all labels.
    Indices must be on the data's device; nothing here waits on it (a CUDA graph captures this too)."""
    x = data.x[idx]
    if model.label_needs == "none":
        return Batch(x=x)
    if model.label_needs == "all":
        return Batch(x=x, y=data.y[idx])
    visible = torch.where(data.is_labelled[idx], data.y[idx], -1)
    return Batch(x=x, y=visible, x_labelled=data.x[lab], y_labelled=data.y[lab])


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Data-parallel step: average this phase's gradients over all workers in one flat all-reduce."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def _average_across_workers(metrics: dict[str, float], ctx: WorkerContext) -> dict[str, float]:
    if ctx.world == 1 or not metrics:
        return metrics
    keys = sorted(metrics)
    values = torch.tensor([metrics[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(values)
    return {k: float(v) / ctx.world for k, v in zip(keys, values.tolist(), strict=True)}


@torch.no_grad()
def validate(model: AAEModel, data: TrainingData, ctx: WorkerContext) -> dict[str, float]:
    """Validation metrics: the error of the y head (class error, or cluster error by majority vote on the
    validation set itself) where the model has one, and the reconstruction loss for every model."""
    model.eval()
    x, y = data.x_val.to(ctx.device), data.y_val.to(ctx.device)
    out: dict[str, float] = {}
    if model.y_head is not None:
        probs = torch.cat([model.classify(chunk) for chunk in x.split(1000)]).cpu()
        out[RANKING_METRIC[model.y_head]] = (
            classification_error(probs, data.y_val) if model.y_head == "classes"
            else cluster_error_majority(probs, data.y_val, probs, data.y_val)
        )
        out.update({f"val/{key}": value for key, value in category_usage(probs).items()})
    styles = model.style_codes(x)
    if styles is not None:
        out["val/z_std_ratio"] = spread_ratio(*styles)
    recon = torch.cat([model.reconstruction(xs, ys) for xs, ys in zip(x.split(1000), y.split(1000), strict=True)])
    out["val/recon_bce"] = reconstruction_errors(x, recon)["recon_bce"]
    model.train()
    return out


# The validation number that ranks a model's checkpoints and a sweep's trials, by the model's y head
# (lower is better): class error, cluster error (majority vote), or the reconstruction loss.
RANKING_METRIC = {"classes": "val/error", "clusters": "val/cluster_error", None: "val/recon_bce"}
VALIDATION_METRICS = tuple(RANKING_METRIC.values())  # the first one a run reports ranks its checkpoints


def validation_metric(metrics: dict[str, float]) -> tuple[str, float]:
    """The number that ranks checkpoints (lower is better); NaN ranks last."""
    key = next(name for name in VALIDATION_METRICS if name in metrics)
    value = metrics[key]
    return key, value if math.isfinite(value) else float("inf")


def save_checkpoint(model: AAEModel, run: RunDir, epoch: int, metrics: dict[str, float], best: float) -> float:
    """Checkpoint epoch `epoch` (0-based): model, optimisers, schedules and its metrics row; returns the best
    validation value so far (this epoch's when it is the best, which then becomes best.pt too)."""
    _, value = validation_metric(metrics)
    write_checkpoint(run, checkpoint_bytes(model.training_state(), epoch, metrics), epoch, best=value <= best)
    return min(value, best)


def restore_latest_checkpoint(model: AAEModel, run: RunDir, config: Config, device: torch.device
                              ) -> tuple[int, float]:
    """Load the newest epoch checkpoint, if any, with the config's optimiser settings (a resume may change
    them); returns (next epoch, best validation value so far)."""
    checkpoints = epoch_checkpoints(run)
    if not checkpoints:
        return 0, float("inf")
    state = read_checkpoint(checkpoints[-1], map_location=device)
    model.load_training_state(state["training_state"], optim_config(config))
    best = float("inf")
    if run.best_checkpoint.exists():
        best = validation_metric(read_checkpoint(run.best_checkpoint)["metrics"])[1]
    return state["epoch"] + 1, best
