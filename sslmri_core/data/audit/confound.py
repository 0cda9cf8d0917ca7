"""The audit's acquisition-confound check (:func:`confound_check`).

**Acquisition confound.** Can the class be predicted without looking at the anatomy? Three
feature sets are cross-validated (out-of-fold predictions over all images):

- ``metadata`` (``metadata_accuracy``): width, height, PIL mode and bit depth (``features`` lists
  those that vary). Classifier: the majority training class of each exact (width, height, mode,
  bit depth) combination, the training majority for unseen ones: for discrete features this is
  the best any classifier can do, and it is exact and instant. This is the flagged one: none of
  it is anatomy, so predicting the class from it means the classes were acquired or stored
  differently and a model can learn the source instead of the disease.
- ``metadata + file size`` (``file_size_accuracy``): reported, never flagged. A compressed file's
  size tracks the image content (a large lesion, a bigger head), so it is not pure acquisition.
- ``intensity`` (``intensity_accuracy``): mean, std, 5/25/50/75/95th percentiles, share of black
  (0) and of saturated (255) pixels of the decoded image. Flagged separately as
  ``intensity_flag``: lesions and atrophy do change these statistics, so a high score is a hint
  (different windowing or scanners, or simply a visible disease), not proof of a confound. The
  decoded images are padded to square, so the black share also carries the aspect ratio.

The last two use ``RandomForestClassifier(50 trees, min_samples_leaf=2, random_state=seed)``.
Folds: 5, fewer when the smallest class or the number of groups is smaller (at least 2). With
subject ids, ``StratifiedGroupKFold`` by subject (slices of one subject never sit on both sides);
without, ``StratifiedKFold`` over exact-duplicate groups (copies of one file stay together). Both
shuffle with ``seed``. ``majority_rate`` is the share of the largest class; ``baseline_accuracy``
is the cross-validated accuracy of guessing each training fold's majority class, which grouped
folds can push below the majority rate.

A feature set is flagged when its accuracy beats ``max(majority_rate, baseline_accuracy)`` by at
least ``CONFOUND_MIN_LIFT`` (0.10, ten points of accuracy; reported as ``lift``) *and* a one-sided
binomial test of the number of correct predictions against that rate gives p < ``CONFOUND_MAX_P``
(0.01). The lift is absolute rather than "accuracy >= 0.8" because with four balanced classes
(majority 0.25) metadata reaching 0.6 is already a strong confound; the test keeps small sets
from being flagged by chance. With one class, fewer than ``CONFOUND_MIN_IMAGES`` (10) images or
too few groups for two folds the accuracies are null, the flags false and ``reason`` says why.
"""

from __future__ import annotations

import warnings
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import binomtest

from sslmri_core.data.manifest import ManifestRow

from .duplicates import identity

CONFOUND_MIN_LIFT = 0.10  # accuracy above max(majority rate, baseline accuracy)
CONFOUND_MAX_P = 0.01  # one-sided binomial test against that rate
CONFOUND_MIN_IMAGES = 10
CONFOUND_MAX_FOLDS = 5
FOREST_TREES = 50  # 100 gave the same accuracy to +-0.005 on the tumour set, at twice the time
_HIST_BLOCK = 256  # images per histogram block
METADATA_FEATURES = ("width", "height", "mode", "bit_depth")
INTENSITY_FEATURES = ("mean", "std", "p5", "p25", "p50", "p75", "p95", "black_share", "saturated_share")
_PERCENTILES = (5, 25, 50, 75, 95)


def metadata_features(rows: Sequence[ManifestRow]) -> tuple[np.ndarray, list[str]]:
    """float ``(N, 4)``: width, height, mode code (sorted mode names), bit depth; -1 where unknown."""
    modes = sorted({r.mode or "" for r in rows})
    code = {m: k for k, m in enumerate(modes)}
    table = [[_num(r.width), _num(r.height), code[r.mode or ""], _num(r.bit_depth)] for r in rows]
    return np.array(table, dtype=np.float64).reshape(len(rows), 4), list(METADATA_FEATURES)


def intensity_features(images: np.ndarray) -> np.ndarray:
    """float ``(N, 9)``, see ``INTENSITY_FEATURES``; exact, from per-image 256-bin histograms."""
    n = len(images)
    out = np.zeros((n, len(INTENSITY_FEATURES)), dtype=np.float64)
    levels = np.arange(256, dtype=np.float64)
    for start in range(0, n, _HIST_BLOCK):
        m = len(images[start : start + _HIST_BLOCK])
        block = images[start : start + m].reshape(m, -1)
        # one bincount for the whole block: image k's pixel v lands in bin k * 256 + v
        flat = (np.arange(m, dtype=np.int64)[:, None] * 256 + block).ravel()
        hist = np.bincount(flat, minlength=m * 256).reshape(m, 256).astype(np.float64)
        share = hist / hist.sum(axis=1, keepdims=True)
        mean = share @ levels
        std = np.sqrt(np.maximum(share @ levels**2 - mean**2, 0.0))
        cdf = np.cumsum(share, axis=1)
        # lower percentile: the first level whose cumulative share reaches q
        pcts = [np.argmax(cdf >= q / 100 - 1e-12, axis=1) for q in _PERCENTILES]
        out[start : start + m] = np.column_stack([mean, std, *pcts, share[:, 0], share[:, 255]])
    return out


def _num(value: int | None) -> float:
    return -1.0 if value is None else float(value)


def _cv_groups(rows: Sequence[ManifestRow], identities: Sequence[str]) -> tuple[np.ndarray, bool]:
    """Group id per row ``(N,)``: its subject, else its exact-duplicate group; and whether any row has a subject."""
    names = [
        f"subject:{r.subject}" if r.subject else f"copy:{ident}" for r, ident in zip(rows, identities, strict=True)
    ]
    _, groups = np.unique(np.array(names, dtype=str), return_inverse=True)
    return groups.ravel(), any(r.subject for r in rows)


Folds = list[tuple[np.ndarray, np.ndarray]]


def _folds(y: np.ndarray, groups: np.ndarray, by_subject: bool, seed: int) -> tuple[Folds, str]:
    """Grouped, stratified (train, test) index pairs and their description; empty when < 2 folds fit."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    n_groups = int(groups.max()) + 1
    if by_subject:
        k = min(CONFOUND_MAX_FOLDS, max(2, int(np.bincount(y).min())), n_groups)
        if k < 2:
            return [], ""
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "least populated class has fewer members than n_splits"
            return list(splitter.split(y, y, groups)), f"StratifiedGroupKFold({k}) by subject"
    # Without subjects the groups are exact-duplicate groups, almost all single images. sklearn's
    # StratifiedGroupKFold loops over groups in Python (about 2 s for 6,000); stratifying the groups
    # themselves by their first member's class gives the same guarantee (copies stay together) at once.
    _, first = np.unique(groups, return_index=True)  # groups are 0..n_groups-1
    group_y = y[first]
    per_class = np.bincount(group_y)
    per_class = per_class[per_class > 0]
    k = min(CONFOUND_MAX_FOLDS, max(2, int(per_class.min())), int(per_class.max()), n_groups)
    if k < 2:
        return [], ""
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        group_folds = list(splitter.split(group_y, group_y))
    rows_of = np.argsort(groups, kind="stable")
    bounds = np.searchsorted(groups[rows_of], np.arange(n_groups + 1))
    folds = []
    for _, test_groups in group_folds:
        test = np.sort(np.concatenate([rows_of[bounds[g] : bounds[g + 1]] for g in test_groups]))
        folds.append((np.setdiff1d(np.arange(len(y)), test), test))
    grouped = " over exact-duplicate groups" if n_groups < len(y) else ""
    return folds, f"StratifiedKFold({k}){grouped}"


def _lookup_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    """Majority training class of each test row's exact feature combination (training majority
    for unseen ones): the best possible classifier on discrete features, and exact."""
    combos, code = np.unique(np.vstack([x_train, x_test]), axis=0, return_inverse=True)
    code = code.ravel()
    counts = np.zeros((len(combos), int(y_train.max()) + 1), dtype=np.int64)
    np.add.at(counts, (code[: len(x_train)], y_train), 1)
    best = counts.argmax(axis=1)  # ties: the lowest class index, deterministically
    best[counts.sum(axis=1) == 0] = np.bincount(y_train).argmax()
    return best[code[len(x_train) :]]


def _cv_accuracy(x: np.ndarray, y: np.ndarray, folds: Folds, seed: int, *, lookup: bool = False) -> tuple[float, int]:
    """Out-of-fold accuracy on ``x (N, F)`` and the number of correct predictions: the lookup
    classifier for discrete features, else a random forest."""
    from sklearn.ensemble import RandomForestClassifier

    x = x[:, np.ptp(x, axis=0) > 0] if x.size else x
    if x.shape[1] == 0:
        x, lookup = np.zeros((len(y), 1)), True  # nothing varies: the prior is all there is to learn
    pred = np.empty_like(y)
    for train, test in folds:
        if lookup:
            pred[test] = _lookup_predict(x[train], y[train], x[test])
        else:
            forest = RandomForestClassifier(
                n_estimators=FOREST_TREES, min_samples_leaf=2, random_state=seed, n_jobs=1
            )
            pred[test] = forest.fit(x[train], y[train]).predict(x[test])
    correct = int((pred == y).sum())
    return correct / len(y), correct


def _flag(correct: int, n: int, reference: float) -> tuple[bool, float]:
    """Confound rule: accuracy - reference >= CONFOUND_MIN_LIFT and one-sided binomial p < CONFOUND_MAX_P."""
    p_value = float(binomtest(correct, n, min(reference, 1.0), alternative="greater").pvalue)
    return (correct / n - reference >= CONFOUND_MIN_LIFT and p_value < CONFOUND_MAX_P), p_value


def _metadata_by_class(rows: Sequence[ManifestRow], top: int = 5) -> dict[str, dict[str, dict[str, int]]]:
    """Most common sizes and modes per class: what the dashboard shows next to a flag."""
    sizes: dict[str, Counter[str]] = defaultdict(Counter)
    modes: dict[str, Counter[str]] = defaultdict(Counter)
    for r in rows:
        sizes[r.label][f"{r.width}x{r.height}"] += 1
        modes[r.label][f"{r.mode}/{r.bit_depth}"] += 1
    return {
        c: {"sizes": dict(sizes[c].most_common(top)), "modes": dict(modes[c].most_common(top))} for c in sorted(sizes)
    }


def confound_check(
    rows: Sequence[ManifestRow], images: np.ndarray, identities: Sequence[str] | None = None, *, seed: int = 0
) -> dict[str, Any]:
    """The ``confound`` section of the summary (see the module docstring for the rule)."""
    identities = list(identities) if identities is not None else [identity(r) for r in rows]
    labels = [r.label for r in rows]
    result: dict[str, Any] = {
        "metadata_accuracy": None,
        "majority_rate": None,
        "baseline_accuracy": None,
        "lift": None,
        "p_value": None,
        "flag": False,
        "features": [],
        "file_size_accuracy": None,
        "intensity_accuracy": None,
        "intensity_lift": None,
        "intensity_p_value": None,
        "intensity_flag": False,
        "intensity_features": list(INTENSITY_FEATURES),
        "cv": None,
        "classifier": {
            "metadata": "majority class of each (width, height, mode, bit depth) combination in the training folds",
            "file_size, intensity": f"RandomForestClassifier(n_estimators={FOREST_TREES}, min_samples_leaf=2)",
        },
        "rule": (
            f"accuracy - max(majority_rate, baseline_accuracy) >= {CONFOUND_MIN_LIFT} "
            f"and one-sided binomial p < {CONFOUND_MAX_P}"
        ),
        "metadata_by_class": _metadata_by_class(rows),
        "reason": "",
    }
    classes = sorted(set(labels))
    if len(classes) < 2:
        result["reason"] = "only one class: nothing to predict"
        return result
    if len(rows) < CONFOUND_MIN_IMAGES:
        result["reason"] = f"too few images ({len(rows)} < {CONFOUND_MIN_IMAGES}) for a cross-validated check"
        return result
    y = np.array([classes.index(lab) for lab in labels])
    groups, by_subject = _cv_groups(rows, identities)
    folds, cv_name = _folds(y, groups, by_subject, seed)
    if not folds:
        result["reason"] = "fewer than two subjects/groups: cannot cross-validate"
        return result
    majority = float(np.bincount(y).max() / len(y))
    baseline = _cv_accuracy(np.zeros((len(y), 0)), y, folds, seed)[0]
    # Grouped folds can make even "guess the training majority" score below the majority rate;
    # comparing against the larger of the two keeps the flag conservative.
    reference = max(majority, baseline)
    meta, names = metadata_features(rows)
    result["features"] = [n for n, spread in zip(names, np.ptp(meta, axis=0), strict=True) if spread > 0]
    result.update(majority_rate=majority, baseline_accuracy=baseline, cv=cv_name)

    acc, correct = _cv_accuracy(meta, y, folds, seed, lookup=True)
    flag, p_value = _flag(correct, len(y), reference)
    result.update(metadata_accuracy=acc, lift=acc - reference, p_value=p_value, flag=flag)

    sizes = np.array([[_num(r.file_size)] for r in rows])
    result["file_size_accuracy"] = _cv_accuracy(np.hstack([meta, sizes]), y, folds, seed)[0]

    i_acc, i_correct = _cv_accuracy(intensity_features(images), y, folds, seed)
    i_flag, i_p = _flag(i_correct, len(y), reference)
    result.update(
        intensity_accuracy=i_acc, intensity_lift=i_acc - reference, intensity_p_value=i_p, intensity_flag=i_flag
    )
    result["reason"] = _confound_reason(result)
    return result


def _confound_reason(result: dict[str, Any]) -> str:
    """One sentence per finding, for the CLI and the dashboard."""
    maj = result["majority_rate"]
    parts = []
    if result["flag"]:
        parts.append(
            f"metadata alone ({', '.join(result['features'])}) predicts the class with accuracy "
            f"{result['metadata_accuracy']:.2f} vs majority rate {maj:.2f}: the classes differ in acquisition"
        )
    elif not result["features"]:
        parts.append("image size, mode and bit depth are the same for every image: no metadata confound")
    else:
        parts.append(
            f"metadata accuracy {result['metadata_accuracy']:.2f} vs majority rate {maj:.2f}: no metadata confound"
        )
    if result["intensity_flag"]:
        parts.append(
            f"intensity statistics predict the class with accuracy {result['intensity_accuracy']:.2f}: "
            "check windowing/scanner differences (lesions also change intensity)"
        )
    return "; ".join(parts)
