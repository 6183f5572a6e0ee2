"""Where a Gaussian-prior model's codes miss their prior: train, validation and test digits side by side.

    python benchmarks/code_moments.py benchmarks/runs/reproduce/parzen-unsup-gaussian

For a run directory of a model with a Gaussian style prior, encodes the first 10,000 digits of each split with
the run's best checkpoint and prints, per split, the evaluate stage's two numbers (`test/code_cov_error`,
`test/code_mean_error`), the covariance error split into its diagonal part (each dimension's spread) and its
off-diagonal part (the correlations between dimensions), and the same numbers for as many draws from the prior
itself: the floor that sampling alone leaves (the 8-D moments in benchmarks/results/fidelity.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from aae.metrics import gaussian_covariance_parts, gaussian_fit
from pipeline.config import load_config
from pipeline.data.splits import load_eval_split
from pipeline.rundir import CONFIG_FILE, RunDir
from pipeline.stages.trained import batched, load_trained_model

SPLITS = ("train", "validation", "test")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--limit", type=int, default=10_000, help="digits per split")
    args = parser.parse_args()
    torch.manual_seed(0)
    config = load_config(str(args.run_dir / CONFIG_FILE))
    splits = {split: load_eval_split(config, split, limit=args.limit) for split in SPLITS}
    model = load_trained_model(config, RunDir(args.run_dir), splits["test"].x.shape[1]).model
    probe = model.style(splits["test"].x[:1])
    if probe is None:
        parser.error(f"{args.run_dir}: its {config.model.variant} model has no code with a Gaussian prior")
    prior_std = probe[1]

    def codes_of(x: torch.Tensor) -> torch.Tensor:
        return model.style(x)[0]  # type: ignore[index]  # a Gaussian code, checked above

    rows = [(f"{split} digits", batched(codes_of, data.x)) for split, data in splits.items()]
    rows.append((f"{args.limit:,} draws from the prior", torch.randn_like(rows[-1][1]) * prior_std))
    print("| codes of | covariance off | diagonal part | off-diagonal part | largest correlation | "
          "largest mean offset (prior stds) |")
    print("|---|---|---|---|---|---|")
    for name, codes in rows:
        fit, parts = gaussian_fit(codes, prior_std), gaussian_covariance_parts(codes, prior_std)
        print(f"| {name} | {fit['code_cov_error']:.1%} | {parts['code_cov_diagonal']:.1%} | "
              f"{parts['code_cov_off_diagonal']:.1%} | {parts['code_largest_correlation']:.3f} | "
              f"{fit['code_mean_error']:.3f} |")


if __name__ == "__main__":
    main()
