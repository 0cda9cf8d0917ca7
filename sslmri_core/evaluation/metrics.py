"""Classification metrics at slice and subject level, with subject-bootstrap 95% intervals.

Point estimates come from scikit-learn. The intervals (:mod:`sslmri_core.evaluation.stats`) resample *subjects*
with replacement within each class (slices of one subject are not independent, and a resample must
keep every class of the split) and score every resample at once over a ``(B, N)`` weight matrix.
Macro scores average over the classes present in the split (``..._all_classes``: over every class).
Subject-level metrics exist only where every subject of the split has one label.
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

from sslmri_core.evaluation.stats import (  # re-exported: the resampling and weighted scores live in stats
    INTERVAL_METRICS,
    LEVEL,
    MIN_SUBJECTS_PER_CLASS,
    bin_index,
    bootstrap_intervals,
    clopper_pearson,
    few_subjects_note,
    group_strata,
    label_presence,
    resample_counts,
    subjects_per_class,
    weighted_scores,
)

__all__ = ["INTERVAL_METRICS", "MIN_SUBJECTS_PER_CLASS", "bootstrap_intervals", "resample_counts", "weighted_scores"]


@dataclass
class SplitEvaluation:
    """Metrics of one split at slice level; ``confusion`` rows are true classes, columns predicted."""

    metrics: dict[str, float]
    confusion: np.ndarray
    predictions: np.ndarray  # (N,) predicted class indices


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
    which = bin_index(conf, n_bins)
    bins = []
    for b in range(n_bins):
        sel = which == b
        if sel.any():
            bins.append({"lo": b / n_bins, "hi": (b + 1) / n_bins, "count": int(sel.sum()),
                         "confidence": float(conf[sel].mean()), "accuracy": float(correct[sel].mean())})
    return bins


def _balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    with warnings.catch_warnings():  # a predicted class absent from y_true is expected on small splits
        warnings.simplefilter("ignore", UserWarning)
        return float(balanced_accuracy_score(y_true, y_pred))


def _macro_scores(
    y_true: np.ndarray, y_pred: np.ndarray, labels: list[int], prefix: str, suffix: str
) -> dict[str, float]:
    """Macro precision, recall and F1 over ``labels`` (0 for a label never predicted)."""
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    return {f"{prefix}_macro_precision{suffix}": float(p), f"{prefix}_macro_recall{suffix}": float(r),
            f"{prefix}_macro_f1{suffix}": float(f)}


def evaluate_probs(
    y_true: np.ndarray, probs: np.ndarray, classes: list[str], prefix: str, n_bins: int = 15
) -> SplitEvaluation:
    """Score class probabilities ``probs`` ``(N, K)`` against labels ``y_true`` ``(N,)``.

    Keys are ``{prefix}_accuracy``, ``_balanced_accuracy``, ``_macro_precision``, ``_macro_recall``,
    ``_macro_f1`` (over the classes present in ``y_true``: a class absent from the split cannot lower
    them), the same over every class as ``_macro_precision_all_classes`` etc., ``_roc_auc`` (macro
    one-vs-rest over the classes present), ``_ece``, and per class ``{prefix}_precision/<class>`` (and
    recall, f1, support, roc_auc when the class is present).
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    labels = list(range(len(classes)))
    present = [int(c) for c in np.unique(y_true)] or labels
    y_pred = probs.argmax(axis=1)
    auc = roc_auc_per_class(y_true, probs)
    metrics = {
        f"{prefix}_accuracy": float(accuracy_score(y_true, y_pred)),
        f"{prefix}_balanced_accuracy": _balanced_accuracy(y_true, y_pred),
        **_macro_scores(y_true, y_pred, present, prefix, ""),
        **_macro_scores(y_true, y_pred, labels, prefix, "_all_classes"),
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
    """Per subject: its label ``(G,)`` and the mean of its slices' probabilities ``(G, K)``.

    The label is -1 where a subject's slices carry different labels (MS: lesion and lesion-free slices
    of one patient): such a subject has no subject-level label, and no majority vote invents one."""
    counts = np.bincount(group, minlength=n_groups).astype(np.float64)
    sums = np.zeros((n_groups, probs.shape[1]))
    np.add.at(sums, group, probs)
    presence = label_presence(y_true, group, n_groups, probs.shape[1])
    labels = np.where(presence.sum(axis=1) == 1, presence.argmax(axis=1), -1)
    return labels, sums / np.maximum(counts, 1.0)[:, None]


@dataclass(frozen=True)
class PatientDecision:
    """The product's patient-level diagnosis: the class of the mean slice probabilities (as subject metrics use)."""

    label: str
    confidence: float  # the mean probability of ``label`` over the slices
    mean_probs: dict[str, float]  # class -> mean probability, in the run's class order
    n_slices: int
    votes: dict[str, int]  # class -> how many slices predict it (shown beside the decision, never used for it)


def patient_decision(probs: np.ndarray, classes: Sequence[str]) -> PatientDecision:
    """Aggregate one patient's slice probabilities ``(N, K)`` (``K == len(classes)``, ``N >= 1``) like
    :func:`aggregate_by_subject`: the mean over slices decides."""
    probs = np.asarray(probs, dtype=np.float64).reshape(-1, len(classes))
    if len(probs) == 0:
        raise ValueError("a patient decision needs at least one slice")
    _, mean = aggregate_by_subject(np.zeros(len(probs), dtype=np.int64), probs, np.zeros(len(probs), dtype=np.int64), 1)
    k = int(mean[0].argmax())
    picks = np.bincount(probs.argmax(axis=1), minlength=len(classes))
    means = {str(c): float(p) for c, p in zip(classes, mean[0], strict=True)}
    votes = {str(c): int(n) for c, n in zip(classes, picks, strict=True) if n}
    return PatientDecision(str(classes[k]), float(mean[0, k]), means, len(probs), votes)


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
    with 95% intervals resampled by subject within each class (result ``{split}_intervals``), reliability
    bins (``{split}_reliability``) and ROC points (``{split}_roc``).

    Rows without a subject id are their own subject, so then both levels are image level. Where a
    subject's slices carry different labels, the subject level (metrics, confusion, intervals,
    reliability, ROC) is left out and ``{split}_intervals`` says why. With fewer than
    :data:`MIN_SUBJECTS_PER_CLASS` subjects in a class, subject accuracy gets an exact interval and the
    other subject-level metrics none (a bootstrap of a handful of subjects is too narrow).
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    group, names = subject_groups(subjects)
    slice_eval = evaluate_probs(y_true, probs, classes, split, n_bins)
    y_subj, p_subj = aggregate_by_subject(y_true, probs, group, len(names))
    presence = label_presence(y_true, group, len(names), len(classes))
    counts = resample_counts(group_strata(presence), n_boot, seed) if n_boot > 0 and len(names) else None
    per_class = subjects_per_class(presence, classes)
    note = few_subjects_note(per_class)
    intervals: dict[str, Any] = {
        "method": "percentile bootstrap over subjects, stratified by class", "n_boot": n_boot, "seed": seed,
        "level": LEVEL, "n_subjects": len(names), "n_slices": len(y_true), "n_subjects_per_class": per_class,
        "few_subjects": note is not None, "note": note,
        "slice": bootstrap_intervals(y_true, probs, group, n_boot, seed, n_bins, counts),
    }
    results = {f"{split}_intervals": intervals,
               f"{split}_reliability": {"n_bins": n_bins, "slice": reliability_bins(y_true, probs, n_bins)},
               f"{split}_roc": {"slice": roc_points(y_true, probs, classes)}}
    confusions = {"slice": slice_eval.confusion}
    metrics = dict(slice_eval.metrics)
    mixed = int((y_subj < 0).sum())
    if mixed:
        intervals.update(subject=None, reason=f"labels vary within {mixed} of {len(names)} subjects: subject-level "
                                              "metrics need one label per subject (slice level only)")
        return FullEvaluation(metrics, confusions, slice_eval.predictions, results)
    subj_eval = evaluate_probs(y_subj, p_subj, classes, f"{split}_subject", n_bins)
    metrics.update(subj_eval.metrics)
    confusions["subject"] = subj_eval.confusion
    intervals.update(subject=_subject_intervals(y_subj, p_subj, n_boot, seed, n_bins, counts, note is not None),
                     reason=None)
    results[f"{split}_reliability"]["subject"] = reliability_bins(y_subj, p_subj, n_bins)
    results[f"{split}_roc"]["subject"] = roc_points(y_subj, p_subj, classes)
    return FullEvaluation(metrics, confusions, slice_eval.predictions, results)


def _subject_intervals(
    y_subj: np.ndarray, p_subj: np.ndarray, n_boot: int, seed: int, n_bins: int, counts: np.ndarray | None,
    few: bool,
) -> dict[str, list[float | None]]:
    """Subject-level intervals: the bootstrap, or with few subjects per class an exact interval for
    accuracy and none for the rest."""
    if not few:
        return bootstrap_intervals(y_subj, p_subj, np.arange(len(y_subj)), n_boot, seed, n_bins, counts)
    out: dict[str, list[float | None]] = {m: [None, None] for m in INTERVAL_METRICS}
    out["accuracy"] = clopper_pearson(int((p_subj.argmax(axis=1) == y_subj).sum()), len(y_subj))
    return out
