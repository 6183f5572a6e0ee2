"""Orchestration for the aae library: data, config, Ray Train/Tune runners, stages, tracking, CLI.

Its public Python API is one import: `from pipeline import load_run` (see pipeline.inference)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.inference import TrainedAAE, load_run

__all__ = ["TrainedAAE", "load_run"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so that `import pipeline` (the CLI's `--help`, say) does not load torch.
    if name in __all__:
        from pipeline import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
