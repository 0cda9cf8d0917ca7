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


def _groups(subjects: Sequence[str | None], hashes: Sequence[str | None] | None = None) -> tuple[list[str], str]:
    """Group key per image: the subject when every image has one, else the image itself, with
    byte-identical copies (same ``hashes`` entry) kept together so a duplicate never spans splits."""
    if subjects and all(s is not None for s in subjects):
        return [str(s) for s in subjects], "subject"
    if hashes is not None:
        return [f"content-{h}" if h else f"image-{i}" for i, h in enumerate(hashes)], "image"
    return [f"image-{i}" for i in range(len(subjects))], "image"


def _group_labels(labels: Sequence[int], groups: Sequence[str]) -> dict[str, int]:
    """Each group's majority class (a subject normally has one)."""
    per_group: dict[str, Counter[int]] = defaultdict(Counter)
    for label, group in zip(labels, groups):
        per_group[group][int(label)] += 1
    return {g: c.most_common(1)[0][0] for g, c in sorted(per_group.items())}


def _allocate(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """Group counts for train/val/test; each non-empty split gets a group when there are at least three."""
    n_val = round(n * fractions[1])
    n_test = round(n * fractions[2])
    if n >= 3:
        n_val = max(n_val, 1) if fractions[1] > 0 else 0
        n_test = max(n_test, 1) if fractions[2] > 0 else 0
    n_train = n - n_val - n_test
    return n_train, n_val, n_test


def split_by_subject(
    labels: Sequence[int],
    subjects: Sequence[str | None],
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    hashes: Sequence[str | None] | None = None,
) -> Split:
    """Stratified (by class) group split: 70/15/15 of each class's subjects, deterministic for a seed.

    Without subject ids, ``hashes`` (content hashes) keep exact duplicates on one side.
    """
    groups, level = _groups(subjects, hashes)
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


def split_given(
    labels: Sequence[int],
    subjects: Sequence[str | None],
    given: Sequence[str | None],
    seed: int = 0,
    val_fraction: float = 0.15,
) -> Split:
    """Honour the data set's own split folders: its test stays test, its val (or, when it has
    none, ``val_fraction`` of its training subjects) is val. Images outside any split folder train."""
    test = np.array([i for i, g in enumerate(given) if g == "test"], dtype=np.int64)
    if len(test) == 0:
        raise ValueError("--use-given-split: the data folder has no Testing/test folder")
    groups, level = _groups(subjects)
    given_val = np.array([i for i, g in enumerate(given) if g == "val"], dtype=np.int64)
    rest = np.array([i for i, g in enumerate(given) if g not in ("test", "val")], dtype=np.int64)
    if len(given_val):
        return Split(rest, given_val, test, level)
    inner = split_by_subject([labels[i] for i in rest], [subjects[i] for i in rest], seed,
                             (1.0 - val_fraction, val_fraction, 0.0))
    return Split(rest[inner.train], rest[inner.val], test, level)


def make_split(
    labels: Sequence[int],
    subjects: Sequence[str | None],
    given: Sequence[str | None],
    seed: int = 0,
    use_given: bool = False,
    hashes: Sequence[str | None] | None = None,
) -> Split:
    """The split every command uses for a data set: its given split when asked, else 70/15/15 by
    subject (by image, duplicates kept together, when there are no subject ids)."""
    if use_given:
        return split_given(labels, subjects, given, seed)
    return split_by_subject(labels, subjects, seed, hashes=hashes)


def label_subset(
    train: np.ndarray,
    labels: Sequence[int],
    subjects: Sequence[str | None],
    fraction: float = 1.0,
    seed: int = 0,
    per_class: int | None = None,
) -> np.ndarray:
    """The labelled part of ``train``, drawn by subject: ``fraction`` of each class's subjects (at
    least one), or whole subjects until a class has ``per_class`` labelled images.

    Subjects are ranked once per seed, so a smaller budget's subjects are always inside a larger
    budget's (budgets are nested).
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    if per_class is not None and per_class < 1:
        raise ValueError(f"labels per class must be at least 1, got {per_class}")
    if fraction == 1.0 and per_class is None:
        return train
    groups, _ = _groups(subjects)
    train_groups = [groups[i] for i in train]
    group_label = _group_labels([labels[i] for i in train], train_groups)
    size = Counter(train_groups)
    rng = np.random.default_rng(seed + 7919)  # a stream of its own, independent of the split's
    keep: set[str] = set()
    for cls in sorted(set(group_label.values())):
        members = sorted(g for g, c in group_label.items() if c == cls)
        order = [members[i] for i in rng.permutation(len(members))]
        if per_class is None:
            keep.update(order[: max(1, math.ceil(fraction * len(order)))])
            continue
        total = 0
        for g in order:
            if total >= per_class:
                break
            keep.add(g)
            total += size[g]
    return np.array([i for i, g in zip(train, train_groups) if g in keep], dtype=np.int64)
