"""Stage 2: data-parallel training on Ray Train, followed live from the run directory."""

from __future__ import annotations

import math
from typing import Any

from aae.optim import PHASES
from pipeline.checkpoints import reconcile_metrics
from pipeline.config import Config
from pipeline.errors import UserError, command
from pipeline.loop import optim_config
from pipeline.progress import EpochPrinter, console
from pipeline.ray import nodes, trainer
from pipeline.ray.cluster import WorkerResources
from pipeline.rundir import DIVERGED, RunDir, atomic_write_text

# The optimiser phase a loss (as metrics.jsonl names it, less train/ and _loss) belongs to.
LOSS_PHASE = {"recon": "reconstruction", "disc": "discriminator", "gen": "generator", "supervised": "supervised"}
# A first clip to try on a phase that has none: the reconstruction norm of a healthy MNIST run is about 33, the
# 2-D models train at the paper's rates with every phase clipped at 5 (docs/deviations.md).
FIRST_CLIP = {"reconstruction": 30.0, "discriminator": 5.0, "generator": 5.0, "supervised": 5.0}


def divergence_advice(config: Config, losses: set[str]) -> str:
    """The overrides worth trying after NaN/inf losses (`losses` names the non-finite ones, e.g. {"recon"}):
    a tenth of each diverged phase's rate, or its gradient clipped (harder, where the run clips it already)."""
    optim = optim_config(config)
    phases = [phase for phase in PHASES if phase in {LOSS_PHASE.get(name.split("_")[0]) for name in losses}]
    phases = phases or list(PHASES)
    rates = " ".join(f"--set train.lr.{phase}={optim.lr[phase] / 10:g}" for phase in phases)
    clipped = all(phase in optim.clip_grad_norm for phase in phases)
    clips = " ".join(
        f"--set train.clip_grad_norm.{phase}={optim.clip_grad_norm.get(phase, FIRST_CLIP[phase] * 2) / 2:g}"
        for phase in phases
    )
    advice = f"{rates}, or keep the rates and clip the gradients{' harder' if clipped else ''}: {clips}"
    if "supervised" in phases and config.data.labels != "all":
        # The few labelled examples come round again every step or two, and the paper's supervised rate
        # (0.1, momentum 0.9) overshoots on them: semisup with 100 labels diverges in its first epoch.
        return f"--set train.lr.supervised={optim.lr['supervised'] / 10:g} (few labels), or {advice}"
    return advice


def train(config: Config, run: RunDir) -> dict[str, Any]:
    """Train on `config.run.workers` Ray workers (Ray is already connected); returns the last epoch's metrics
    and the checkpoint."""
    plan = trainer.worker_plan(config)
    per_worker = config.train.batch_size // config.run.workers
    optim = optim_config(config)
    rates = ", ".join(f"{phase} {optim.lr[phase]:g}" for phase in PHASES)
    console.print(
        f"training {config.experiment} on {plan.workers} worker(s) x {plan.threads} thread(s)"
        f"{(' + GPU, CUDA graphs' if config.run.cuda_graphs else ' + GPU') if plan.gpus else ''}: "
        f"global batch {config.train.batch_size} "
        f"(~{per_worker} per worker, gradients averaged); {optim.kind} learning rates {rates} "
        f"(not rescaled by the worker count), x{optim.decay_factor:g} after epochs {list(optim.decay_epochs)}"
    )
    nodes.clear_worker_records(run)
    reconcile_metrics(run)  # before the printer follows the file: a resume may drop rows of epochs to redo
    printer = EpochPrinter(run.metrics_path, config.train.epochs)
    printer.start()
    try:
        fit_again_after_controller_failures(config, run, plan)
    finally:
        printer.stop()
    rows = run.read_metrics()
    final = {key: value for key, value in rows[-1].items() if not key.startswith("time/")} if rows else {}
    warning = degeneracy_warning(config, final)
    if warning:
        console.print(f"[bold yellow]{warning}[/bold yellow]")
    best = run.best_checkpoint
    outputs = {"metrics": final, "checkpoint": str(best), "epochs": len(rows), "workers": nodes.worker_records(run)}
    diverged = run.divergence()
    if diverged is not None:
        epoch = outputs["diverged_at_epoch"] = diverged[DIVERGED]
        # The losses the model reported name its phases, e.g. train/supervised_loss.
        losses = {key.removeprefix("train/").removesuffix("_loss"): value for key, value in diverged["losses"].items()}
        advice = divergence_advice(config, {name for name, value in losses.items() if not math.isfinite(value)})
        if not best.exists():
            raise UserError(
                f"training diverged (NaN/inf losses) in epoch {epoch}, before any checkpoint was saved",
                f"lower the learning rates: {advice}",
            )
        console.print(
            f"[bold yellow]warning: losses became NaN/inf at epoch {epoch}; training stopped and the best "
            f"checkpoint so far is evaluated. To train further, resume "
            f"(`{command('aae-pipeline run --resume', run.path)}`) with lower learning rates: {advice}[/bold yellow]"
        )
    return outputs


def fit_again_after_controller_failures(config: Config, run: RunDir, plan: WorkerResources) -> None:
    """trainer.fit, started again from the last checkpoint when Ray Train's own controller fails, up to
    `run.max_failures` times (the budget Ray gives failed workers).

    Such a failure is Ray's, not the model's, and the checkpoints are intact, so the user would only re-run the
    command. Each one's error and the controller's log go to logs/train-controller-failure-N.log."""
    for attempt in range(1, config.run.max_failures + 2):
        try:
            trainer.fit(config, run, plan)
            return
        except trainer.ControllerFailed as failure:
            if attempt > config.run.max_failures:
                raise
            log = run.path / "logs" / f"train-controller-failure-{attempt}.log"
            log.parent.mkdir(exist_ok=True)
            atomic_write_text(log, f"{failure}\n")
            console.print(
                f"[bold yellow]warning: {str(failure).splitlines()[0]} (details in {log}); training continues "
                f"from the last checkpoint (restart {attempt} of at most {config.run.max_failures})[/bold yellow]"
            )


def degeneracy_warning(config: Config, final: dict[str, Any]) -> str | None:
    """The warning for a trained model that collapsed (few categories used, style codes off their prior's
    scale) on validation data, naming the likely causes and the keys to change; None for a healthy one."""
    from aae.metrics import degeneracy_signs
    from aae.variants import build_model

    n_categories = getattr(build_model(config.model.variant, config.model.params), "n_categories", None)
    signs = degeneracy_signs(final.get("val/clusters_used"), n_categories, final.get("val/z_std_ratio"))
    if not signs:
        return None
    return (
        f"warning: the model looks degenerate on validation data ({'; '.join(signs)}). Likely causes: the "
        "adversarial regularisation lost to reconstruction, so the style code carries what the categories or the "
        "prior should. Keys to try: model.params.y_batchnorm=true (categories), model.params.disc_init=he with "
        "train.clip_grad_norm.* (discriminators that learn from the first step), model.params.z_prior_std, "
        "train.lr.generator and train.lr.discriminator, more epochs."
    )
