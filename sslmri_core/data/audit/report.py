"""The audit's entry point: :func:`audit_dataset` and the :class:`AuditReport` it returns.

``audit_dataset(manifest, images, split_of)`` checks the usable rows of a manifest together with
their decoded images (uint8 ``(N, S, S)``, in ``manifest.usable`` order) and returns an
:class:`AuditReport`.

**Splits.** ``split_of`` (row key -> ``train|val|test``) when given (``split_source="provided"``),
else each row's ``given_split`` when any row has one (``"given"``), else none (``"none"``). Rows
without a split are ignored by every cross-split count.

The other rules live with their checks: :mod:`.duplicates` (exact and near-duplicate groups; the
near-duplicate rule itself is in :mod:`.near`), :mod:`.balance` (subject leaks, class balance,
slices per subject) and :mod:`.confound` (acquisition confound).

**Output.** The summary is JSON-safe (plain Python types, no NaN: a non-finite float becomes
null). A group is ``{"hash", "size", "keys", "labels", "splits", "subjects", "cross_class",
"cross_split", "cross_subject"}`` (near groups add ``max_distance``; their ``hash`` is the
smallest member pHash in hex), the member lists aligned with ``keys``; groups come worst first
(cross-class, then cross-split, then larger). A leak is ``{"subject", "splits", "images"}``.
:meth:`AuditReport.to_json` adds the lists under ``details``, capped (``details.cut`` counts what
was left out; a group's member lists are cut at ``member_cap`` and ``members_cut`` says by how
many).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sslmri_core.data.manifest import Manifest, ManifestRow

from .balance import class_balance, slices_per_subject, subject_leaks, subjects_spanning_classes
from .confound import confound_check
from .duplicates import exact_groups, identity, near_groups

LIST_CAP = 200  # entries per list in to_json
MEMBER_CAP = 50  # keys per group in to_json


@dataclass
class AuditReport:
    """The audit: a JSON summary and the groups behind its counts."""

    summary: dict[str, Any]
    duplicate_groups: list[dict[str, Any]]
    near_duplicate_groups: list[dict[str, Any]]
    subject_leaks: list[dict[str, Any]]

    def to_json(self, cap: int = LIST_CAP, member_cap: int = MEMBER_CAP) -> dict[str, Any]:
        """Summary plus ``details``: the lists (worst first) capped at ``cap`` entries, each
        group's member lists at ``member_cap``; ``details.cut`` says how many entries were left out."""
        details: dict[str, Any] = {"cut": {}}
        for name in ("duplicate_groups", "near_duplicate_groups", "subject_leaks"):
            items: list[dict[str, Any]] = getattr(self, name)
            details[name] = [_cap_members(item, member_cap) for item in items[:cap]]
            details["cut"][name] = max(0, len(items) - cap)
        return _jsonable({**self.summary, "details": details})


def audit_dataset(
    manifest: Manifest,
    images: np.ndarray,
    split_of: dict[str, str] | None = None,
    *,
    near_threshold: int = 4,
    near_min_corr: float = 0.96,
    seed: int = 0,
) -> AuditReport:
    """Audit the usable rows of ``manifest``; ``images`` is uint8 ``(N, S, S)`` in ``manifest.usable`` order."""
    rows = manifest.usable
    _check_images(images, len(rows))
    splits, split_source = _splits(rows, split_of)
    identities = [identity(r) for r in rows]

    dup_groups = exact_groups(rows, splits, identities)
    near_dups = near_groups(rows, splits, identities, images, near_threshold, near_min_corr)
    leaks = subject_leaks(rows, splits)
    confound = confound_check(rows, images, identities, seed=seed)

    summary: dict[str, Any] = {
        "files": len(manifest.files()),
        "images": len(rows),
        "unusable": len(manifest.unusable),
        "classes": sorted({r.label for r in rows}),
        "split_source": split_source,
        "near_threshold": near_threshold,
        "near_min_corr": near_min_corr,
        "duplicate_groups": len(dup_groups),
        "duplicate_images": sum(g["size"] for g in dup_groups),
        "redundant_images": sum(g["size"] - 1 for g in dup_groups),
        "cross_class_duplicates": sum(g["cross_class"] for g in dup_groups),
        "cross_split_duplicates": sum(g["cross_split"] for g in dup_groups),
        "cross_subject_duplicates": sum(g["cross_subject"] for g in dup_groups),
        "near_duplicate_groups": len(near_dups),
        "near_duplicate_images": sum(g["size"] for g in near_dups),
        "cross_class_near_duplicates": sum(g["cross_class"] for g in near_dups),
        "cross_split_near_duplicates": sum(g["cross_split"] for g in near_dups),
        "cross_subject_near_duplicates": sum(g["cross_subject"] for g in near_dups),
        "subject_leaks": len(leaks),
        "subjects_spanning_classes": subjects_spanning_classes(rows),
        "confound": confound,
        "class_balance": class_balance([r.label for r in rows]),
        "slices_per_subject": slices_per_subject(rows),
    }
    return AuditReport(_jsonable(summary), _jsonable(dup_groups), _jsonable(near_dups), _jsonable(leaks))


def _check_images(images: np.ndarray, n: int) -> None:
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, S, S), got {images.dtype} {images.shape}")
    if images.shape[0] != n:
        raise ValueError(f"{images.shape[0]} images for {n} usable manifest rows: they must be aligned")


def _splits(rows: Sequence[ManifestRow], split_of: dict[str, str] | None) -> tuple[list[str | None], str]:
    """Split name per row (None: unknown) and where it came from: provided | given | none."""
    if split_of is not None:
        return [split_of.get(r.key) for r in rows], "provided"
    if any(r.given_split for r in rows):
        return [r.given_split or None for r in rows], "given"
    return [None] * len(rows), "none"


def _cap_members(group: dict[str, Any], cap: int) -> dict[str, Any]:
    """The group with its per-member lists cut to ``cap`` entries (``size`` keeps the full count)."""
    out = dict(group)
    for name in ("keys", "labels", "splits", "subjects"):
        if name in out and len(out[name]) > cap:
            out[name] = out[name][:cap]
            out["members_cut"] = group["size"] - cap
    return out


def _jsonable(value: Any) -> Any:
    """Plain Python types only; NaN and infinities become None."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value
