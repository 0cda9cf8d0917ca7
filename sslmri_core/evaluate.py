"""Classification metrics at slice and subject level, with subject-bootstrap 95% intervals.

Point estimates come from scikit-learn. The bootstrap resamples *subjects* with replacement
(slices of one subject are not independent) and scores every resample at once: a resample is a
vector of per-subject counts, i.e. a weight per row, so each metric is a few matrix products over
a ``(B, N)`` weight matrix instead of ``B`` Python-level calls.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

# Metrics that get bootstrap intervals (names without the split prefix).
INTERVAL_METRICS = ("accuracy", "balanced_accuracy", "macro_precision", "macro_recall", "macro_f1", "roc_auc", "ece")


@dataclass
class SplitEvaluation:
    """Metrics of one split at slice level; ``confusion`` rows are true classes, columns predicted."""

    metrics: dict[str, float]
    confusion: np.ndarray
    predictions: np.ndarray  # (N,) predicted class indices


def _onehot(index: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((len(index), k), dtype=np.float64)
    out[np.arange(len(index)), index] = 1.0
    return out


def roc_auc_per_class(y_true: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """One-vs-rest ROC-AUC per class ``(K,)``; NaN for a class with no positive or no negative row."""
    out = np.full(probs.shape[1], np.nan)
    for c in range(probs.shape[1]):
        pos = y_true == c
        if pos.any() and (~pos).any():
            out[c] = roc_auc_score(pos, probs[:, c])
    return out


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> float:
    """ECE: the count-weighted mean |accuracy - confidence| over equal-width confidence bins."""
    return float(weighted_scores(y_true, probs, np.ones((1, len(y_true))), n_bins)["ece"][0])


def reliability_bins(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> list[dict[str, float]]:
    """Non-empty confidence bins: ``lo, hi, count, confidence`` (mean) and ``accuracy``."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    which = _bin_index(conf, n_bins)
    bins = []
    for b in range(n_bins):
        sel = which == b
        if sel.any():
            bins.append({"lo": b / n_bins, "hi": (b + 1) / n_bins, "count": int(sel.sum()),
                         "confidence": float(conf[sel].mean()), "accuracy": float(correct[sel].mean())})
    return bins


def _bin_index(conf: np.ndarray, n_bins: int) -> np.ndarray:
    # (lo, hi] bins like the usual ECE definition; a confidence of 0 goes to the first bin.
    return np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)


def _balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    with warnings.catch_warnings():  # a predicted class absent from y_true is expected on small splits
        warnings.simplefilter("ignore", UserWarning)
        return float(balanced_accuracy_score(y_true, y_pred))


def evaluate_probs(
    y_true: np.ndarray, probs: np.ndarray, classes: list[str], prefix: str, n_bins: int = 15
) -> SplitEvaluation:
    """Score class probabilities ``probs`` ``(N, K)`` against labels ``y_true`` ``(N,)``.

    Keys are ``{prefix}_accuracy``, ``_balanced_accuracy``, ``_macro_precision``, ``_macro_recall``,
    ``_macro_f1``, ``_roc_auc`` (macro one-vs-rest over the classes present), ``_ece``, and per class
    ``{prefix}_precision/<class>`` (and recall, f1, support, roc_auc when the class is present).
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    labels = list(range(len(classes)))
    y_pred = probs.argmax(axis=1)
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    auc = roc_auc_per_class(y_true, probs)
    metrics = {
        f"{prefix}_accuracy": float(accuracy_score(y_true, y_pred)),
        f"{prefix}_balanced_accuracy": _balanced_accuracy(y_true, y_pred),
        f"{prefix}_macro_precision": float(p),
        f"{prefix}_macro_recall": float(r),
        f"{prefix}_macro_f1": float(f),
        f"{prefix}_roc_auc": float(np.nanmean(auc)) if np.isfinite(auc).any() else float("nan"),
        f"{prefix}_ece": expected_calibration_error(y_true, probs, n_bins),
    }
    pc, rc, fc, sc = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=None, zero_division=0)
    for i, name in enumerate(classes):
        metrics[f"{prefix}_precision/{name}"] = float(pc[i])
        metrics[f"{prefix}_recall/{name}"] = float(rc[i])
        metrics[f"{prefix}_f1/{name}"] = float(fc[i])
        metrics[f"{prefix}_support/{name}"] = float(sc[i])
        if np.isfinite(auc[i]):
            metrics[f"{prefix}_roc_auc/{name}"] = float(auc[i])
    return SplitEvaluation(metrics, confusion_matrix(y_true, y_pred, labels=labels), y_pred)


# -- subjects -------------------------------------------------------------------------------------
def subject_groups(subjects: Sequence[str | None]) -> tuple[np.ndarray, list[str]]:
    """Group index per row ``(N,)`` and the group names; a row without a subject is its own group."""
    names = [s if s is not None else f"image-{i}" for i, s in enumerate(subjects)]
    unique, index = np.unique(np.array(names, dtype=object), return_inverse=True)
    return index.astype(np.int64), [str(u) for u in unique]


def aggregate_by_subject(
    y_true: np.ndarray, probs: np.ndarray, group: np.ndarray, n_groups: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per subject: the mean of its slices' probabilities ``(G, K)`` and its label ``(G,)`` (the
    majority of its slices' labels; normally they all agree)."""
    counts = np.bincount(group, minlength=n_groups).astype(np.float64)
    sums = np.zeros((n_groups, probs.shape[1]))
    np.add.at(sums, group, probs)
    votes = np.zeros((n_groups, probs.shape[1]))
    np.add.at(votes, (group, np.asarray(y_true, dtype=np.int64)), 1.0)
    return votes.argmax(axis=1), sums / np.maximum(counts, 1.0)[:, None]


# -- weighted (bootstrap) scores --------------------------------------------------------------------
def _weighted_auc(scores: np.ndarray, positive: np.ndarray, w: np.ndarray) -> np.ndarray:
    """ROC-AUC of ``scores`` ``(N,)`` for every weight row of ``w`` ``(B, N)`` (ties count one half)."""
    if len(scores) == 0:
        return np.full(len(w), np.nan)
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])  # one per distinct score
    ws = w[:, order]
    pos_w = np.add.reduceat(ws * positive[order], starts, axis=1)  # (B, U) positive weight per score, ascending
    neg_w = np.add.reduceat(ws * ~positive[order], starts, axis=1)
    below = np.cumsum(neg_w, axis=1) - neg_w  # negative weight strictly below each score
    total = pos_w.sum(axis=1) * neg_w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (pos_w * (below + 0.5 * neg_w)).sum(axis=1) / total, np.nan)


def weighted_scores(y_true: np.ndarray, probs: np.ndarray, w: np.ndarray, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Every :data:`INTERVAL_METRICS` metric ``(B,)`` for each row of weights ``w`` ``(B, N)``.

    A weight is how often a row is drawn (a bootstrap count), so with ``w`` all ones this equals
    scikit-learn on the plain data: macro scores over all K classes with 0 for an empty class
    (``zero_division=0``), balanced accuracy over the classes present, ROC-AUC over the classes
    with both positives and negatives.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    k = probs.shape[1]
    y_pred = probs.argmax(axis=1)
    truth, pred = _onehot(y_true, k), _onehot(y_pred, k)
    correct = (y_true == y_pred).astype(np.float64)
    total = w.sum(axis=1)
    tp = w @ (truth * pred)  # (B, K)
    support = w @ truth
    predicted = w @ pred
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, tp / support, 0.0)
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        denom = support + predicted  # 2TP + FP + FN
        f1 = np.where(denom > 0, 2 * tp / denom, 0.0)
        present = support > 0
        balanced = np.where(present.any(axis=1), (recall * present).sum(axis=1) / present.sum(axis=1), np.nan)
        auc = np.stack([_weighted_auc(probs[:, c], y_true == c, w) for c in range(k)], axis=1)
        defined = np.isfinite(auc)
        macro_auc = np.where(defined.any(axis=1), np.where(defined, auc, 0.0).sum(axis=1) / defined.sum(axis=1), np.nan)
        conf = probs.max(axis=1)
        bins = _onehot(_bin_index(conf, n_bins), n_bins)
        ece = np.abs(w @ (bins * correct[:, None]) - w @ (bins * conf[:, None])).sum(axis=1) / total
        return {
            "accuracy": (w @ correct) / total,
            "balanced_accuracy": balanced,
            "macro_precision": precision.mean(axis=1),
            "macro_recall": recall.mean(axis=1),
            "macro_f1": f1.mean(axis=1),
            "roc_auc": macro_auc,
            "ece": ece,
        }


def resample_counts(n_groups: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """``(n_boot, n_groups)`` draw counts: each row resamples ``n_groups`` groups with replacement."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_boot).astype(np.float64)


def bootstrap_intervals(
    y_true: np.ndarray, probs: np.ndarray, group: np.ndarray, n_boot: int = 1000, seed: int = 0,
    n_bins: int = 15, counts: np.ndarray | None = None,
) -> dict[str, list[float | None]]:
    """Percentile 95% intervals of every :data:`INTERVAL_METRICS` metric, resampling groups (subjects).

    ``group`` ``(N,)`` maps each row to its subject (0..G-1); every row of a drawn subject comes
    along. A resample where a metric is undefined (e.g. ROC-AUC with one class) is left out of
    that metric's interval.
    """
    n_groups = int(group.max()) + 1 if len(group) else 0
    if n_groups == 0 or n_boot <= 0:
        return {m: [None, None] for m in INTERVAL_METRICS}
    counts = resample_counts(n_groups, n_boot, seed) if counts is None else counts
    scores = weighted_scores(y_true, probs, counts[:, group], n_bins)
    out: dict[str, list[float | None]] = {}
    for name, values in scores.items():
        finite = values[np.isfinite(values)]
        out[name] = [float(np.percentile(finite, 2.5)), float(np.percentile(finite, 97.5))] if len(finite) else [None, None]
    return out


def roc_points(y_true: np.ndarray, probs: np.ndarray, classes: list[str], max_points: int = 200) -> dict[str, Any]:
    """One-vs-rest ROC curve per class present (``fpr``, ``tpr`` rounded, at most ``max_points``) and its AUC."""
    out: dict[str, Any] = {}
    auc = roc_auc_per_class(np.asarray(y_true), probs)
    for c, name in enumerate(classes):
        if not np.isfinite(auc[c]):
            continue
        fpr, tpr, _ = roc_curve(np.asarray(y_true) == c, probs[:, c])
        keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), max_points)).round().astype(int))
        out[name] = {"fpr": [round(float(v), 4) for v in fpr[keep]], "tpr": [round(float(v), 4) for v in tpr[keep]],
                     "auc": float(auc[c])}
    return out


# -- the whole evaluation of one split --------------------------------------------------------------
@dataclass
class FullEvaluation:
    """Everything stored for one split: metric rows, confusions per level, named JSON results."""

    metrics: dict[str, float]
    confusion: dict[str, np.ndarray]  # level -> (K, K) counts
    predictions: np.ndarray  # (N,) slice-level predicted class indices
    results: dict[str, Any] = field(default_factory=dict)


def evaluate_split(
    y_true: np.ndarray, probs: np.ndarray, subjects: Sequence[str | None], classes: list[str], split: str,
    n_boot: int = 1000, seed: int = 0, n_bins: int = 15,
) -> FullEvaluation:
    """Slice-level (keys ``{split}_...``) and subject-level (``{split}_subject_...``) metrics of one split,
    with bootstrap 95% intervals resampled by subject (result ``{split}_intervals``), reliability bins
    (``{split}_reliability``) and ROC points (``{split}_roc``).

    Rows without a subject id are their own subject, so then both levels are image level.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    group, names = subject_groups(subjects)
    slice_eval = evaluate_probs(y_true, probs, classes, split, n_bins)
    y_subj, p_subj = aggregate_by_subject(y_true, probs, group, len(names))
    subj_eval = evaluate_probs(y_subj, p_subj, classes, f"{split}_subject", n_bins)
    counts = resample_counts(len(names), n_boot, seed) if n_boot > 0 and len(names) else None
    intervals = {
        "slice": bootstrap_intervals(y_true, probs, group, n_boot, seed, n_bins, counts),
        "subject": bootstrap_intervals(y_subj, p_subj, np.arange(len(names)), n_boot, seed, n_bins, counts),
    }
    results = {
        f"{split}_intervals": {"method": "percentile bootstrap over subjects", "n_boot": n_boot, "seed": seed,
                               "level": 0.95, "n_subjects": len(names), "n_slices": int(len(y_true)), **intervals},
        f"{split}_reliability": {"n_bins": n_bins, "slice": reliability_bins(y_true, probs, n_bins),
                                 "subject": reliability_bins(y_subj, p_subj, n_bins)},
        f"{split}_roc": {"slice": roc_points(y_true, probs, classes), "subject": roc_points(y_subj, p_subj, classes)},
    }
    return FullEvaluation({**slice_eval.metrics, **subj_eval.metrics},
                          {"slice": slice_eval.confusion, "subject": subj_eval.confusion},
                          slice_eval.predictions, results)
