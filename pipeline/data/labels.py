"""Balanced labelled subsets of the training split for semi-supervised runs."""

from __future__ import annotations

import numpy as np

from pipeline.errors import UserError


def parse_n_labels(n_labels: int | str) -> int | None:
    """A positive label count, or None for 'all'; anything else is a UserError."""
    if isinstance(n_labels, str) and n_labels.strip().lower() == "all":
        return None
    try:
        count = int(n_labels)
    except (TypeError, ValueError):
        count = 0
    if isinstance(n_labels, bool) or count < 1 or str(count) != str(n_labels).strip():
        raise UserError(f"n_labels must be a positive whole number or 'all', not {n_labels!r}",
                        "set n_labels to e.g. 100, 1000 or all")
    return count


def check_covers_classes(n_labels: int, n_classes: int) -> None:
    """Refuse a label count below the class count: a balanced subset needs at least one label per class."""
    if n_labels < n_classes:
        raise UserError(f"{n_labels} labelled examples cannot be balanced over the training split's {n_classes} "
                        "classes: a balanced subset needs at least one per class",
                        f"use at least {n_classes} labels or 'all'")


def balanced_subset(labels: np.ndarray, n_labels: int, seed: int) -> np.ndarray:
    """Sorted int64 indices of `n_labels` examples, equal per class; leftovers go to seed-chosen classes."""
    if parse_n_labels(n_labels) is None:  # parse_n_labels refuses 0, negatives and non-integers in one line
        raise ValueError("balanced_subset needs a count: for 'all' take every index")
    classes, available = np.unique(labels, return_counts=True)
    check_covers_classes(n_labels, len(classes))
    if n_labels > len(labels):
        raise UserError(f"asked for {n_labels} labelled examples but the training split has {len(labels)}",
                        f"use at most {len(labels)} labels or 'all'")
    rng = np.random.default_rng(seed)
    wanted = np.full(len(classes), n_labels // len(classes))
    # The remainder (N not divisible by the class count) goes one each to classes the seed picks.
    wanted[rng.choice(len(classes), size=n_labels % len(classes), replace=False)] += 1
    short = np.flatnonzero(wanted > available)
    if short.size:
        c = short[0]
        raise UserError(f"{n_labels} balanced labels need {wanted[c]} of class {classes[c]}, "
                        f"but the training split has only {available[c]}",
                        f"use at most {int(available.min()) * len(classes)} labels or 'all'")
    picked = [rng.choice(np.flatnonzero(labels == c), size=k, replace=False)
              for c, k in zip(classes, wanted, strict=True)]
    return np.sort(np.concatenate(picked)).astype(np.int64)
