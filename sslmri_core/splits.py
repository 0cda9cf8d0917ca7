"""Train/val/test splits grouped by subject, and nested label budgets.

A subject never spans two splits. Without subject ids every image is its own group: the split
is then image-level and results must be flagged as leakage-prone (``split_level == "image"``).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    """Index arrays into the image set, and how the split was grouped."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    level: str  # "subject" or "image"

    def assignment(self, n: int) -> list[str]:
        """The split name of each of the ``n`` images."""
        out = [""] * n
        for name in SPLITS:
            for i in getattr(self, name):
                out[int(i)] = name
        return out


def _groups(subjects: Sequence[str | None]) -> tuple[list[str], str]:
    """Group key per image: the subject when every image has one, else the image itself."""
    if subjects and all(s is not None for s in subjects):
        return [str(s) for s in subjects], "subject"
    return [f"image-{i}" for i in range(len(subjects))], "image"


def _group_labels(labels: Sequence[int], groups: Sequence[str]) -> dict[str, int]:
    """Each group's majority class (a subject normally has one)."""
    per_group: dict[str, Counter[int]] = defaultdict(Counter)
    for label, group in zip(labels, groups):
        per_group[group][int(label)] += 1
    return {g: c.most_common(1)[0][0] for g, c in sorted(per_group.items())}


def _allocate(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """Group counts for train/val/test; every split gets one group when there are at least three."""
    n_val = round(n * fractions[1])
    n_test = round(n * fractions[2])
    if n >= 3:
        n_val, n_test = max(n_val, 1), max(n_test, 1)
    n_train = n - n_val - n_test
    return n_train, n_val, n_test


def split_by_subject(
    labels: Sequence[int],
    subjects: Sequence[str | None],
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
) -> Split:
    """Stratified (by class) group split: 70/15/15 of each class's subjects, deterministic for a seed."""
    groups, level = _groups(subjects)
    group_label = _group_labels(labels, groups)
    rng = np.random.default_rng(seed)
    split_of: dict[str, str] = {}
    for cls in sorted(set(group_label.values())):
        members = [g for g, c in group_label.items() if c == cls]
        members = [members[i] for i in rng.permutation(len(members))]
        n_train, n_val, _ = _allocate(len(members), fractions)
        for j, g in enumerate(members):
            split_of[g] = "train" if j < n_train else "val" if j < n_train + n_val else "test"
    idx = {name: np.array([i for i, g in enumerate(groups) if split_of[g] == name], dtype=np.int64) for name in SPLITS}
    return Split(idx["train"], idx["val"], idx["test"], level)


def label_subset(
    train: np.ndarray, labels: Sequence[int], subjects: Sequence[str | None], fraction: float, seed: int = 0
) -> np.ndarray:
    """The labelled part of ``train``: ``fraction`` of each class's subjects (at least one).

    Subjects are ranked once per seed, so a smaller fraction's subjects are always inside a
    larger fraction's (budgets are nested).
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return train
    groups, _ = _groups(subjects)
    train_groups = [groups[i] for i in train]
    group_label = _group_labels([labels[i] for i in train], train_groups)
    rng = np.random.default_rng(seed + 7919)  # a stream of its own, independent of the split's
    keep: set[str] = set()
    for cls in sorted(set(group_label.values())):
        members = sorted(g for g, c in group_label.items() if c == cls)
        order = [members[i] for i in rng.permutation(len(members))]
        keep.update(order[: max(1, math.ceil(fraction * len(order)))])
    return np.array([i for i, g in zip(train, train_groups) if g in keep], dtype=np.int64)
