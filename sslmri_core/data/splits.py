"""Train/val/test splits and k folds over groups, given splits checked for leaks, nested label budgets.

The unit is the *group* of :mod:`sslmri_core.data.groups` (a subject, else a component of exact and
near copies), so nothing a model could memorise sits on two sides.

**Assignment by hash.** Each group's side is decided by a hash of ``(seed, group key)`` against the
70/15/15 thresholds, separately per class (a group's class is its majority label). Adding or
removing a file therefore moves at most that file's group; the price is that proportions are
stratified in expectation (a binomial draw per group: an SD of 1.5 points per class for a thousand
groups), not to the image. Small classes are guarded: a class with fewer than three groups trains
only, and a class with three or more whose draw left val or test empty moves the highest-hash group
of its fullest side there.

**Given splits** (``Training/`` + ``Testing/`` folders) are used only when asked, and refused when a
group sits on two sides of them (exit 2 with counts), unless ``allow_leaky`` records the run as
leakage-prone. **Folds** (``folds=K``): scikit-learn's ``StratifiedGroupKFold`` over the groups,
every group tested exactly once; validation is drawn from each fold's training part by hash.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeAlias

import numpy as np

from sslmri_core.data.groups import Grouping
from sslmri_core.errors import UsageError

if TYPE_CHECKING:
    from sslmri_core.data.loading import ImageSet

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)
VAL_FRACTION = 0.15  # of the training part, when a given split or a fold has no validation of its own
SPLIT_UNITS = ("group", "image")

# Class indices per image: a list, or the int64 ``(N,)`` array ``ImageSet.labels`` gives.
Labels: TypeAlias = "Sequence[int] | np.ndarray"


class LeakySplitError(UsageError):
    """A given split puts one group (subject or copy) on two sides; refused unless allowed."""


@dataclass(frozen=True)
class Split:
    """Index arrays into the image set, each image's group, and why results on it may leak."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    level: str  # subject | mixed | content (how groups were found) | image (split_unit=image: leaky on purpose)
    groups: list[str]  # (N,) group key per image
    source: str = "grouped"  # grouped | given | fold i/K
    reasons: list[str] = field(default_factory=list)  # empty: not leakage-prone

    def assignment(self, n: int) -> list[str]:
        """The split name of each of the ``n`` images."""
        out = [""] * n
        for name in SPLITS:
            for i in getattr(self, name):
                out[int(i)] = name
        return out

    def n_groups(self, name: str) -> int:
        return len({self.groups[int(i)] for i in getattr(self, name)})


def _unit(seed: int, key: str) -> float:
    """A uniform number in [0, 1) fixed by the seed and the group key."""
    return int(hashlib.sha256(f"{seed}\0{key}".encode()).hexdigest()[:13], 16) / 16**13


def group_labels(labels: Labels, groups: Sequence[str]) -> dict[str, int]:
    """Each group's majority class (ties: the smallest class index); a subject normally has one."""
    per_group: dict[str, Counter[int]] = defaultdict(Counter)
    for label, group in zip(labels, groups, strict=False):
        per_group[group][int(label)] += 1
    return {g: min(c, key=lambda k: (-c[k], k)) for g, c in sorted(per_group.items())}


def assign_groups(group_label: dict[str, int], seed: int, fractions: tuple[float, float, float]) -> dict[str, str]:
    """``group -> train|val|test`` by hash thresholds per class (see the module docstring)."""
    t_train, t_val = fractions[0], fractions[0] + fractions[1]
    side: dict[str, str] = {}
    for cls in sorted(set(group_label.values())):
        members = sorted((g for g, c in group_label.items() if c == cls), key=lambda g: _unit(seed, g))
        if len(members) < 3:
            side.update({g: "train" for g in members})
            continue
        u = {g: _unit(seed, g) for g in members}
        mine = {g: "train" if u[g] < t_train else "val" if u[g] < t_val else "test" for g in members}
        for name, share in (("train", fractions[0]), ("test", fractions[2]), ("val", fractions[1])):
            if share > 0 and name not in mine.values():
                # the highest-hash group of the fullest side gives way (train first on ties)
                sizes = Counter(mine.values())
                donor_side = max(SPLITS, key=lambda sp: (sizes[sp], sp == "train"))
                mine[max((g for g in members if mine[g] == donor_side), key=lambda g: u[g])] = name
        side.update(mine)
    return side


def _indices(groups: Sequence[str], side: dict[str, str]) -> dict[str, np.ndarray]:
    return {name: np.array([i for i, g in enumerate(groups) if side[g] == name], dtype=np.int64) for name in SPLITS}


def _image_groups(n: int) -> list[str]:
    return [f"image:{i}" for i in range(n)]


def split_grouped(
    labels: Labels, grouping: Grouping, seed: int = 0, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    unit: str = "group",
) -> Split:
    """70/15/15 by group, per class, by hash (``unit="image"``: every image its own group, leaky on purpose)."""
    if unit not in SPLIT_UNITS:
        raise ValueError(f"split unit must be one of {', '.join(SPLIT_UNITS)}, got {unit!r}")
    groups = grouping.keys if unit == "group" else _image_groups(len(labels))
    idx = _indices(groups, assign_groups(group_labels(labels, groups), seed, fractions))
    if unit == "image":
        reason = ("split by image on purpose (split_unit=image): slices of one subject and copies of one image "
                  "sit on two sides")
        return Split(idx["train"], idx["val"], idx["test"], "image", groups, "grouped", [reason])
    return Split(idx["train"], idx["val"], idx["test"], grouping.level, groups, "grouped", grouping.reasons())


def _inner_val(labels: Labels, groups: Sequence[str], rest: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and val indices drawn by group from ``rest`` (VAL_FRACTION of its groups, per class)."""
    rest_groups = [groups[int(i)] for i in rest]
    rest_labels = group_labels([labels[int(i)] for i in rest], rest_groups)
    side = assign_groups(rest_labels, seed, (1 - VAL_FRACTION, VAL_FRACTION, 0.0))
    train = np.array([i for i, g in zip(rest, rest_groups, strict=False) if side[g] == "train"], dtype=np.int64)
    val = np.array([i for i, g in zip(rest, rest_groups, strict=False) if side[g] == "val"], dtype=np.int64)
    return train, val


def given_leaks(groups: Sequence[str], given: Sequence[str | None]) -> dict[str, list[str]]:
    """Groups whose images sit on more than one side of a given split: ``group -> sides``."""
    sides: dict[str, set[str]] = defaultdict(set)
    for g, s in zip(groups, given, strict=False):
        sides[g].add(s or "train")
    return {g: sorted(s) for g, s in sides.items() if len(s) > 1}


def _leak_message(leaks: dict[str, list[str]], groups: Sequence[str]) -> str:
    size = Counter(groups)
    subjects = sum(g.startswith("subject:") for g in leaks)
    copies = len(leaks) - subjects
    images = sum(size[g] for g in leaks)
    example = sorted(leaks)[0]
    return (f"--use-given-split: the folder's own split puts {subjects} subject(s) and {copies} duplicate group(s) "
            f"({images} images) on two sides (e.g. {example.split(':', 1)[1][:40]} in {'+'.join(leaks[example])})")


def split_given(
    labels: Labels, grouping: Grouping, given: Sequence[str | None], seed: int = 0, allow_leaky: bool = False,
) -> Split:
    """Honour the folder's split folders: its test stays test, its val (else 15% of its training
    groups) is val. A group on two sides is refused (:class:`LeakySplitError`) unless ``allow_leaky``."""
    test = np.array([i for i, g in enumerate(given) if g == "test"], dtype=np.int64)
    if len(test) == 0:
        raise ValueError("--use-given-split: the data folder has no Testing/test folder")
    groups = grouping.keys
    leaks = given_leaks(groups, given)
    reasons = grouping.reasons()
    if leaks:
        message = _leak_message(leaks, groups)
        if not allow_leaky:
            raise LeakySplitError(message + "; drop --use-given-split to split by group, or add --allow-leaky-split "
                                  "to keep it (the run is then recorded as leakage-prone)")
        reasons = [*reasons, message.split(": ", 1)[1] + " (kept with --allow-leaky-split)"]
    given_val = np.array([i for i, g in enumerate(given) if g == "val"], dtype=np.int64)
    rest = np.array([i for i, g in enumerate(given) if g not in ("test", "val")], dtype=np.int64)
    train, val = (rest, given_val) if len(given_val) else _inner_val(labels, groups, rest, seed)
    return Split(train, val, test, grouping.level, groups, "given", reasons)


def check_folds(folds: int, n_groups: int) -> None:
    """One-line refusal of an impossible fold count."""
    if folds < 2:
        raise ValueError(f"--folds must be at least 2, got {folds}")
    if folds > n_groups:
        raise ValueError(f"--folds {folds} is more than the {n_groups} groups (subjects or duplicate groups) "
                         "of the data")


def split_fold(labels: Labels, grouping: Grouping, folds: int, fold: int, seed: int = 0) -> Split:
    """Fold ``fold`` of ``folds`` over groups, stratified by class as far as the groups allow; every
    group is tested in exactly one fold, and validation is drawn from the fold's training part."""
    from sklearn.model_selection import StratifiedGroupKFold

    check_folds(folds, grouping.n_groups)
    if not 0 <= fold < folds:
        raise ValueError(f"fold must be in 0..{folds - 1}, got {fold}")
    y = np.asarray(labels, dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the least populated class has fewer members than n_splits"
        rest, test = list(splitter.split(y, y, grouping.keys))[fold]
    train, val = _inner_val(labels, grouping.keys, rest, seed)
    return Split(train, val, np.asarray(test, dtype=np.int64), grouping.level, grouping.keys,
                 f"fold {fold + 1}/{folds}", grouping.reasons())


def make_split(
    labels: Labels,
    grouping: Grouping,
    given: Sequence[str | None],
    seed: int = 0,
    use_given: bool = False,
    *,
    allow_leaky: bool = False,
    unit: str = "group",
    folds: int | None = None,
    fold: int | None = None,
) -> Split:
    """The split every command uses for a data set: fold ``fold`` of ``folds``, the checked given
    split when asked, else 70/15/15 by group."""
    if folds is not None:
        if use_given:
            raise ValueError("--folds and --use-given-split exclude each other")
        return split_fold(labels, grouping, folds, fold or 0, seed)
    if use_given:
        return split_given(labels, grouping, given, seed, allow_leaky)
    return split_grouped(labels, grouping, seed, unit=unit)


def split_for(data: ImageSet, seed: int, *, use_given: bool = False, allow_leaky: bool = False,
              unit: str = "group", folds: int | None = None, fold: int | None = None) -> Split:
    """The split of a folder loaded with :func:`sslmri_core.data.loading.load_folder` that every command draws
    with these settings (fine-tuning, the SSL pool's exclusions, the audit)."""
    if data.grouping is None:
        raise ValueError("the image set has no groups: load it with load_folder")
    if folds is not None:
        check_folds(folds, data.grouping.n_groups)
    return make_split(data.labels, data.grouping, data.given_splits, seed, use_given, allow_leaky=allow_leaky,
                      unit=unit, folds=folds, fold=fold)


def label_subset(
    train: np.ndarray,
    labels: Labels,
    groups: Sequence[str],
    fraction: float = 1.0,
    seed: int = 0,
    per_class: int | None = None,
) -> np.ndarray:
    """The labelled part of ``train``, drawn by group: ``fraction`` of each class's groups (at
    least one), or whole groups until a class has ``per_class`` labelled images.

    Groups are ranked once per seed, so a smaller budget's groups are always inside a larger
    budget's (budgets are nested).
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    if per_class is not None and per_class < 1:
        raise ValueError(f"labels per class must be at least 1, got {per_class}")
    if fraction == 1.0 and per_class is None:
        return train
    train_groups = [groups[int(i)] for i in train]
    group_label = group_labels([labels[int(i)] for i in train], train_groups)
    size = Counter(train_groups)
    keep: set[str] = set()
    for cls in sorted(set(group_label.values())):
        # a stream of its own (offset 7919), independent of the split's
        order = sorted((g for g, c in group_label.items() if c == cls), key=lambda g: _unit(seed + 7919, g))
        if per_class is None:
            keep.update(order[: max(1, math.ceil(fraction * len(order)))])
            continue
        total = 0
        for g in order:
            if total >= per_class:
                break
            keep.add(g)
            total += size[g]
    return np.array([i for i, g in zip(train, train_groups, strict=False) if g in keep], dtype=np.int64)
