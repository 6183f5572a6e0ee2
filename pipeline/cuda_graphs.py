"""Training steps replayed as CUDA graphs.

On a GPU at batch 100 one AAE step is a few hundred small kernels, and launching them from Python is what
takes the time (one H100: 5.6 s per semisup epoch eager, 0.97 s with the step captured once and replayed).
CapturedSteps captures whole steps of whatever variant the model is and replays them:

- the batch is gathered inside the graph from device-resident data, by indices held in static buffers that
  are refilled once per epoch; a step counter on the device picks each step's row;
- prior draws and noise come from the model's generator, which lives on the GPU (AAEModel.generator) and is
  registered with every graph, so each replay draws afresh and reseeding it between epochs takes effect;
- the losses are summed into a device buffer inside the graph and read once per epoch;
- learning rates, momenta and clip norms are baked into a capture as numbers, so any change to them (the
  decay at epoch 50, a restored checkpoint) triggers a new capture before the next replay;
- with data-parallel workers each phase's NCCL all-reduce is captured with the step.

A step that waits on the host (a .item(), a boolean mask) cannot be captured: the last warm-up step runs
under torch's sync debug mode, and a step that synchronises trains eagerly through the same buffers, with
the reason in `eager_reason`. With capture=False everything but the capture itself runs, on any device:
that is how the CPU tests check the buffers, the loss sums and the lr handling.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from aae.batch import Batch
from aae.variants.base import AAEModel

MakeBatch = Callable[[Tensor, Tensor], Batch]  # (row indices, labelled row indices) -> the step's batch
WARMUP_STEPS = 3  # eager steps before the first capture: lazy state (optimiser buffers, cuBLAS) is built there
# Runs packed into one process (pipeline.pack) train from several threads: one capture at a time.
_CAPTURING = threading.Lock()


class CapturedSteps:
    """Runs the training steps of one model, epoch by epoch, as replays of captured CUDA graphs.

    rows: (steps, batch) and labelled_rows: (steps, labelled batch) index tensors give each epoch's batches;
    their shapes are fixed at construction. One step is captured per graph: the GPU, not the launches from
    Python, limits a replayed step (several steps per graph measured no faster).
    """

    def __init__(self, model: AAEModel, make_batch: MakeBatch, rows_shape: tuple[int, int],
                 labelled_shape: tuple[int, int], device: torch.device, amp: bool = False,
                 capture: bool = True) -> None:
        self.model, self.make_batch, self.amp, self.device = model, make_batch, amp, device
        self.capture = capture
        self.eager_reason: str | None = None if capture else "capture=False"
        self.rows = torch.zeros(rows_shape, dtype=torch.long, device=device)
        self.labelled_rows = torch.zeros(labelled_shape, dtype=torch.long, device=device)
        self.position = torch.zeros(1, dtype=torch.long, device=device)  # the step the next replay trains
        self.keys: tuple[str, ...] | None = None  # the step's loss names, fixed by the first step
        self.totals: Tensor | None = None  # per-loss sums over this epoch's steps, float64 on the device
        self.replay: Callable[[], None] | None = None  # one training step, as captured (or eager)
        self.captured_settings: tuple[Any, ...] | None = None
        self.captures = 0  # how many times the graphs were (re)captured
        self.warm = False
        # Each runner captures on a stream of its own (torch's default capture stream is shared by all graphs).
        self.capture_stream = torch.cuda.Stream(device) if capture else None
        if capture:
            make_optimizers_capturable(model)

    @property
    def captured(self) -> bool:
        """Whether steps replay as CUDA graphs (False while warming up, or when the step cannot be captured)."""
        return self.capture and self.replay is not None

    def run_epoch(self, rows: Tensor, labelled_rows: Tensor) -> dict[str, float]:
        """Train one step per row of `rows`; returns each loss averaged over the steps (one host sync)."""
        steps = len(rows)
        self.rows[:steps].copy_(rows)
        self.labelled_rows[:steps].copy_(labelled_rows)
        self.position.zero_()
        if self.totals is not None:
            self.totals.zero_()
        done, settings = 0, self.settings()  # rates change between epochs (end_epoch), never within one
        while done < steps:
            if not self.warm:
                warmup = min(WARMUP_STEPS, steps - done)
                self._warm_up(warmup)
                done += warmup
                continue
            if self.captured_settings != settings:
                self._capture()
            assert self.replay is not None
            self.replay()
            done += 1
        assert self.keys is not None and self.totals is not None
        return dict(zip(self.keys, (self.totals / max(steps, 1)).tolist(), strict=True))

    def settings(self) -> tuple[Any, ...]:
        """Every optimiser number a capture bakes in: rates, momenta, betas, weight decay, clip norms."""
        return tuple(
            (phase, getattr(optimizer, "clip_grad_norm", None),
             *((group["lr"], group.get("momentum"), group.get("betas"), group.get("weight_decay"))
               for group in optimizer.param_groups))
            for phase, optimizer in self.model.optimizers.items()
        )

    # -- one step, as captured ----------------------------------------------------------------------
    def _train_step(self) -> None:
        """The step at self.position, reading its batch from the static buffers; nothing here waits on the
        host, so it can be captured."""
        batch = self.make_batch(self.rows.index_select(0, self.position)[0],
                                self.labelled_rows.index_select(0, self.position)[0])
        # cache_enabled=False: autocast's weight cache would hold tensors from outside the capture.
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp, cache_enabled=False):
            losses = self.model.training_step(batch)
        if self.keys is None:  # the first step, always eager
            self.keys = tuple(losses)
            self.totals = torch.zeros(len(self.keys), dtype=torch.float64, device=self.device)
        elif tuple(losses) != self.keys:
            raise RuntimeError(f"the step's losses changed from {self.keys} to {tuple(losses)}; a captured step "
                               "must run the same phases every time")
        assert self.totals is not None
        self.totals += torch.stack([losses[key].double() for key in self.keys])
        self.position += 1

    def _eager_steps(self, count: int) -> None:
        for _ in range(count):
            self._train_step()

    # -- warm-up and capture ------------------------------------------------------------------------
    def _warm_up(self, steps: int) -> None:
        """Real training steps, run eagerly (on a side stream, as torch's capture recipe asks); the last one
        under the sync debug mode, to find out whether the step can be captured at all."""
        if not self.capture:
            self._eager_steps(steps)
            self.warm = True
            return
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self._eager_steps(steps - 1)
            self.eager_reason = _host_sync_in(self._train_step)
        torch.cuda.current_stream(self.device).wait_stream(side)
        if self.eager_reason is not None:
            self.capture = False
        self.warm = True

    def _capture(self) -> None:
        """(Re)capture the step's graph (eagerly, the same step through the same buffers, where it cannot be)."""
        self.replay = None  # drop a stale graph (and its memory) before capturing anew
        if self.capture:
            try:
                with _CAPTURING:
                    self.replay = self._capture_graph()
            except (RuntimeError, AttributeError) as err:  # an operation the driver cannot capture, an old torch
                self.capture = False
                self.eager_reason = f"capture failed: {str(err).splitlines()[0]}"
        if not self.capture:
            self.replay = self._train_step
        self.captured_settings = self.settings()
        self.captures += 1

    def _capture_graph(self) -> Callable[[], None]:
        graph = torch.cuda.CUDAGraph()
        # Registered, the generator's seed and offset are read at each replay, so replays draw new numbers.
        graph.register_generator_state(self.model.generator)
        # thread_local: calls other threads make meanwhile (NCCL's watchdog, Ray's) do not void the capture.
        with torch.cuda.graph(graph, stream=self.capture_stream, capture_error_mode="thread_local"):
            self._train_step()
        return graph.replay


def _host_sync_in(step: Callable[[], None]) -> str | None:
    """Run `step` under torch's sync debug mode; the first host synchronisation it reports, or None."""
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    # Only the mode's reports: switching it on also warns once per process that it is a prototype.
    syncs = [str(w.message).splitlines()[0] for w in caught if "called a synchronizing" in str(w.message)]
    return f"the step waits on the host ({syncs[0]})" if syncs else None


def make_optimizers_capturable(model: AAEModel) -> None:
    """Adam keeps its step count on the host unless told otherwise, which a graph cannot capture; SGD needs
    nothing. Call before the first step (or after restoring optimiser state)."""
    for optimizer in model.optimizers.values():
        for group in optimizer.param_groups:
            if "capturable" in group:
                group["capturable"] = True
        for param, state in optimizer.state.items():
            if isinstance(state.get("step"), Tensor):
                state["step"] = state["step"].to(param.device, torch.float32)
