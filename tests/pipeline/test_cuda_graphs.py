"""The CUDA-graph step runner's device-independent parts, on the CPU: with capture=False it runs everything but
the capture itself (static index buffers, the device-side loss sums, the generator, the re-capture when a
learning rate changes), and must train exactly as the eager loop does. The captures themselves are measured on
a GPU by benchmarks/gpu.py."""

from __future__ import annotations

import pytest
import torch

from pipeline.config import load_config
from pipeline.data.splits import load_training_data
from pipeline.loop import (
    WorkerContext,
    build_training_model,
    captured_steps,
    train_one_epoch,
    uses_cuda_graphs,
)
from tests.conftest import tiny_overrides


@pytest.mark.parametrize(("experiment", "labels"), [("semisup", "100"), ("cluster16", "all"),
                                                     ("supervised", "all")])
def test_replayed_steps_train_exactly_like_the_eager_loop(experiment: str, labels: str, synthetic_dataset) -> None:
    # decay_epochs=[1]: every rate drops after the first epoch, which must trigger a fresh capture.
    config = load_config(experiment, tiny_overrides(synthetic_dataset, f"data.labels={labels}",
                                                    "train.decay_epochs=[1]"))
    data = load_training_data(config)
    ctx = WorkerContext()

    def fresh():  # noqa: ANN202
        torch.manual_seed(0)
        return build_training_model(config, data)

    eager, replayed = fresh(), fresh()
    runner = captured_steps(replayed, data, config, ctx, capture=False)
    for epoch in range(3):
        expected = train_one_epoch(eager, data, config, ctx, epoch)
        assert train_one_epoch(replayed, data, config, ctx, epoch, runner) == expected
    for name, tensor in eager.state_dict().items():
        assert torch.equal(tensor, replayed.state_dict()[name]), name
    # Captured at the start of epoch 1 (after three warm-up steps), again at epoch 2 after the decay; epoch 3's
    # rates are those of epoch 2, so its capture is reused.
    assert runner.captures == 2
    assert not runner.captured and runner.eager_reason == "capture=False"


def test_losses_are_summed_on_the_device_and_match_the_per_step_values(synthetic_dataset) -> None:
    config = load_config("semisup", tiny_overrides(synthetic_dataset, "data.labels=100"))
    data = load_training_data(config)
    torch.manual_seed(0)
    model = build_training_model(config, data)
    runner = captured_steps(model, data, config, WorkerContext(), capture=False)
    steps: list[dict[str, float]] = []
    step = runner._train_step

    def recording_step() -> None:  # the per-step values the runner adds up
        before = runner.totals.clone() if runner.totals is not None else None
        step()
        after = runner.totals
        delta = after if before is None else after - before
        steps.append(dict(zip(runner.keys, delta.tolist(), strict=True)))

    runner._train_step = recording_step  # type: ignore[method-assign]
    means = train_one_epoch(model, data, config, WorkerContext(), 0, runner)
    assert len(steps) == len(data.x) // config.train.batch_size
    for key in runner.keys:
        assert means[f"train/{key}"] == pytest.approx(sum(s[key] for s in steps) / len(steps), rel=1e-9)
    assert runner.totals.dtype == torch.float64


def test_cuda_graphs_are_skipped_cleanly_without_cuda(synthetic_dataset) -> None:
    config = load_config("semisup", tiny_overrides(synthetic_dataset, "run.cuda_graphs=true"))
    assert not uses_cuda_graphs(config, torch.device("cpu"))
    assert uses_cuda_graphs(config, torch.device("cuda"))
    off = load_config("semisup", tiny_overrides(synthetic_dataset, "run.cuda_graphs=false"))
    assert not uses_cuda_graphs(off, torch.device("cuda"))


def test_the_training_generator_follows_the_model_to_its_device(synthetic_dataset) -> None:
    config = load_config("semisup", tiny_overrides(synthetic_dataset, "data.labels=100"))
    torch.manual_seed(0)
    model = build_training_model(config, load_training_data(config))
    assert model.generator.device == torch.device("cpu")
    draws = model.prior_sample(model.z_prior, 5)
    assert draws.device == torch.device("cpu") and draws.shape == (5, model.z_prior.dim)
    if torch.cuda.is_available():  # on a GPU machine: the draws a CUDA graph captures stay on the GPU
        model.to("cuda")
        assert model.generator.device.type == "cuda"
        assert model.prior_sample(model.z_prior, 5).device.type == "cuda"
