"""Classification metrics for a split (scikit-learn does the arithmetic)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
)


@dataclass
class SplitEvaluation:
    """Metrics of one split at slice level; ``confusion`` rows are true classes, columns predicted."""

    metrics: dict[str, float]
    confusion: np.ndarray
    predictions: np.ndarray  # (N,) predicted class indices


def evaluate_probs(y_true: np.ndarray, probs: np.ndarray, classes: list[str], prefix: str) -> SplitEvaluation:
    """Score class probabilities ``probs`` ``(N, K)`` against labels ``y_true`` ``(N,)``.

    Keys are ``{prefix}_accuracy``, ``_balanced_accuracy``, ``_macro_precision``, ``_macro_recall``,
    ``_macro_f1`` and per class ``{prefix}_precision/<class>`` (and recall, f1, support).
    """
    labels = list(range(len(classes)))
    y_pred = probs.argmax(axis=1)
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    metrics = {
        f"{prefix}_accuracy": float(accuracy_score(y_true, y_pred)),
        f"{prefix}_balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        f"{prefix}_macro_precision": float(p),
        f"{prefix}_macro_recall": float(r),
        f"{prefix}_macro_f1": float(f),
    }
    pc, rc, fc, sc = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=None, zero_division=0)
    for i, name in enumerate(classes):
        metrics[f"{prefix}_precision/{name}"] = float(pc[i])
        metrics[f"{prefix}_recall/{name}"] = float(rc[i])
        metrics[f"{prefix}_f1/{name}"] = float(fc[i])
        metrics[f"{prefix}_support/{name}"] = float(sc[i])
    return SplitEvaluation(metrics, confusion_matrix(y_true, y_pred, labels=labels), y_pred)
