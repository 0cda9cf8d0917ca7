"""Subjects and balance of an audit.

**Subject leaks.** Subjects whose usable rows fall into > 1 split. ``subject_leaks`` is their
count; ``subjects_spanning_classes`` counts subjects with images in > 1 class (a labelling
problem, or slice-level labels such as lesion / no lesion).

**Balance.** ``class_balance``: images per class, ``imbalance_ratio`` (largest / smallest),
majority class and rate. ``slices_per_subject``: null without subject ids, else min / median /
max / mean images per subject over rows with a subject, and subjects per class.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from sslmri_core.data.manifest import ManifestRow


def subject_leaks(rows: Sequence[ManifestRow], splits: Sequence[str | None]) -> list[dict[str, Any]]:
    """Subjects whose images sit in more than one split, most images first."""
    in_splits: dict[str, set[str]] = defaultdict(set)
    counts: Counter[str] = Counter()
    for row, split in zip(rows, splits, strict=True):
        if row.subject:
            counts[row.subject] += 1
            if split:
                in_splits[row.subject].add(split)
    leaks = [
        {"subject": s, "splits": sorted(sp), "images": counts[s]} for s, sp in in_splits.items() if len(sp) > 1
    ]
    return sorted(leaks, key=lambda x: (-x["images"], x["subject"]))


def subjects_spanning_classes(rows: Sequence[ManifestRow]) -> int:
    labels: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        if row.subject:
            labels[row.subject].add(row.label)
    return sum(len(v) > 1 for v in labels.values())


def class_balance(labels: Sequence[str]) -> dict[str, Any]:
    """Images per class, largest / smallest ratio, majority class and its share."""
    counts = Counter(labels)
    if not counts:
        return {"counts": {}, "imbalance_ratio": None, "majority_class": None, "majority_rate": None}
    major, n_major = max(sorted(counts.items()), key=lambda kv: kv[1])
    return {
        "counts": dict(sorted(counts.items())),
        "imbalance_ratio": n_major / min(counts.values()),
        "majority_class": major,
        "majority_rate": n_major / len(labels),
    }


def slices_per_subject(rows: Sequence[ManifestRow]) -> dict[str, Any] | None:
    """Images per subject (rows with a subject id only); None when no row has one."""
    per_subject = Counter(r.subject for r in rows if r.subject)
    if not per_subject:
        return None
    counts = np.array(list(per_subject.values()))
    subjects_per_class: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        if row.subject:
            subjects_per_class[row.label].add(row.subject)
    return {
        "subjects": len(per_subject),
        "min": int(counts.min()),
        "median": float(np.median(counts)),
        "max": int(counts.max()),
        "mean": float(counts.mean()),
        "subjects_per_class": {k: len(v) for k, v in sorted(subjects_per_class.items())},
        "images_without_subject": sum(1 for r in rows if not r.subject),
    }
