"""Benchmark: the vectorised subject bootstrap against a loop that scores each resample with scikit-learn.

    python bench/bootstrap.py [--subjects 150] [--slices 6] [--classes 4] [--resamples 1000] [--repeats 3]

Prints one JSON object: seconds per split (all interval metrics: accuracy, balanced accuracy,
macro precision / recall / F1, one-vs-rest ROC-AUC, ECE) for (a) a loop that materialises each
resample (the drawn subjects' slices) and calls scikit-learn, and (b) ``bootstrap_intervals``
(weights per resample, all at once); medians over ``--repeats``; the ratio is (a) / (b). The loop
runs on a tenth of the resamples and is scaled up, so the benchmark stays short.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, precision_recall_fscore_support, roc_auc_score

from sslmri_core.evaluation.metrics import bootstrap_intervals, expected_calibration_error, resample_counts


def _data(subjects: int, slices: int, classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(subjects) % classes, slices)
    logits = rng.normal(size=(len(y), classes)) + 1.2 * np.eye(classes)[y]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, probs, np.repeat(np.arange(subjects), slices)


def _loop(y: np.ndarray, probs: np.ndarray, group: np.ndarray, counts: np.ndarray) -> None:
    members = [np.flatnonzero(group == g) for g in range(counts.shape[1])]
    for row in counts:
        rows = np.concatenate([members[g] for g in range(len(row)) for _ in range(int(row[g]))])
        yb, pb = y[rows], probs[rows]
        pred = pb.argmax(axis=1)
        accuracy_score(yb, pred)
        balanced_accuracy_score(yb, pred)
        precision_recall_fscore_support(yb, pred, labels=list(range(probs.shape[1])), average="macro", zero_division=0)
        [roc_auc_score(yb == c, pb[:, c]) for c in range(probs.shape[1]) if (yb == c).any() and (yb != c).any()]
        expected_calibration_error(yb, pb)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subjects", type=int, default=150)
    parser.add_argument("--slices", type=int, default=6)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    y, probs, group = _data(args.subjects, args.slices, args.classes)
    counts = resample_counts(args.subjects, args.resamples, seed=0)
    loop_n = max(1, args.resamples // 10)
    loop_s, vec_s = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        _loop(y, probs, group, counts[:loop_n])
        loop_s.append((time.perf_counter() - start) * args.resamples / loop_n)
        start = time.perf_counter()
        bootstrap_intervals(y, probs, group, n_boot=args.resamples, seed=0)
        vec_s.append(time.perf_counter() - start)
    loop, vec = statistics.median(loop_s), statistics.median(vec_s)
    print(json.dumps({
        "benchmark": "subject bootstrap, one split", "slices": len(y), "subjects": args.subjects,
        "classes": args.classes, "resamples": args.resamples, "repeats": args.repeats,
        "sklearn_loop_s": round(loop, 3), "vectorised_s": round(vec, 3), "ratio": round(loop / vec, 1),
        "cpus": os.cpu_count(), "machine": platform.machine(), "load_avg_1m": round(os.getloadavg()[0], 1),
    }))


if __name__ == "__main__":
    main()
