"""Do the committed recipes train sensibly on MNIST-format data they were not tuned on?

Trains `semisup` (1000 labels, the committed config) on another IDX dataset for a few epochs and compares
its error, epoch by epoch, with a logistic regression fitted on the same 1000 labelled examples alone: the
semi-supervised model should beat it within its first epochs, with every loss finite. The run is logged
as a fidelity row (fidelity.jsonl); the comparison goes to benchmarks/results/other_dataset.jsonl.

    python benchmarks/other_dataset.py idx:/path/to/fashion-mnist --epochs 3

Fashion-MNIST (Zalando, MIT licence) is one such dataset; without internet, Debian ships it:
`apt-get download dataset-fashion-mnist && dpkg-deb -x dataset-fashion-mnist_*.deb x` leaves the four IDX
files in x/usr/share/datasets/fashion-mnist/.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
from fidelity import fidelity_run
from sklearn.linear_model import LogisticRegression

from aae.metrics import classification_error
from pipeline.config import load_config
from pipeline.data import prepare_dataset
from pipeline.data.splits import load_eval_split, load_training_data

RESULTS = Path(__file__).resolve().parent / "results" / "other_dataset.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="idx:/path/to/dir holding the four MNIST-layout IDX files")
    parser.add_argument("--experiment", default="semisup")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides = [f"data.dataset={args.dataset}", *args.overrides]
    config = load_config(args.experiment, overrides)
    prepare_dataset(args.dataset, Path(config.data.data_dir) if config.data.data_dir else None)

    baseline = logistic_regression_on_labelled(overrides, args.experiment)
    row = fidelity_run(args.experiment, args.epochs, overrides, f"recipe on {args.dataset}, not tuned on it")
    curve = [point.get("val/error") for point in row["curve"]]
    finite = not row["diverged"] and all(value is not None and math.isfinite(value) for value in curve)
    result = {
        "dataset": args.dataset, "experiment": args.experiment, "overrides": args.overrides,
        "labelled": baseline["labelled"], "logreg_val_error": baseline["val_error"],
        "logreg_test_error": baseline["test_error"], "aae_val_error_by_epoch": curve,
        "aae_test_error": row.get("test/error"), "finite": finite,
        "beats_logreg_at_epoch": next((i + 1 for i, value in enumerate(curve)
                                      if value is not None and value < baseline["val_error"]), None),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as log:
        log.write(json.dumps(result) + "\n")
    print(json.dumps(result, indent=2))


def logistic_regression_on_labelled(overrides: list[str], experiment: str) -> dict[str, float]:
    """Validation and test error of a logistic regression trained on the run's labelled examples only."""
    config = load_config(experiment, overrides)
    data = load_training_data(config)
    labelled = data.labelled.numpy()
    model = LogisticRegression(max_iter=2000)
    model.fit(data.x[labelled].numpy(), data.y[labelled].numpy())
    test = load_eval_split(config, "test")
    return {"labelled": len(labelled),
            "val_error": classification_error(model.predict(data.x_val.numpy()), data.y_val.numpy()),
            "test_error": classification_error(model.predict(test.x.numpy()), np.asarray(test.y))}


if __name__ == "__main__":
    main()
