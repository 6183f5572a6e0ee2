"""The pipeline's stages: prepare, train, evaluate, visualize, track.

Each is a plain function `(Config, RunDir) -> dict` in its own module: what it returns is recorded as the stage's
outputs in the run's manifest, and a "metrics" entry, if any, is merged into the run's metrics. pipeline/chain.py
lists them in order with the inputs each one hashes, and runs them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeline.config import Config
from pipeline.rundir import RunDir

StageFn = Callable[[Config, RunDir], dict[str, Any]]

# Files the stages leave in the run directory, named here so that the chain can hash them without importing the
# stages (torch, matplotlib).
EVALUATION_FILE = "evaluation.json"
FIGURE_DIR = "figures"
