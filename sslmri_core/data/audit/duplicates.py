"""Exact and near-duplicate groups of an audit.

**Exact duplicates.** Groups of >= 2 usable rows with the same ``content_hash`` (and the same
``slice_index``: the slices of one NIfTI volume share the volume's hash but are different
images). ``duplicate_groups`` counts the groups, ``duplicate_images`` their members and
``redundant_images`` the copies beyond the first of each. ``cross_class_duplicates`` counts the
groups whose members carry > 1 label, ``cross_split_duplicates`` the groups whose members sit in
> 1 split (0 without split information), ``cross_subject_duplicates`` those spanning > 1 subject.

**Near duplicates.** Links are the pairs the rule of :func:`.near.near_links` confirms;
near-duplicate groups are their connected components (so a chain a~b~c is one group even when a
and c differ: ``max_distance`` is the group's largest pairwise pHash distance, its diameter). A
group is counted only when it holds at least two *different* images (two distinct content
hashes): a group that is nothing but one exact-duplicate group is already counted above.
Neighbouring slices of one scan are near duplicates by nature (a whole OASIS scan stack chains
into one group), so ``cross_subject_near_duplicates`` counts the groups that span subjects: the
suspicious ones when subjects are known. ``cross_class_near_duplicates`` and
``cross_split_near_duplicates`` as for exact duplicates.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from sslmri_core.data.manifest import ManifestRow

from .hashing import max_hamming
from .near import near_links


def identity(row: ManifestRow) -> str:
    """What makes two rows the same image: file hash plus slice index; the key when unhashed."""
    if row.content_hash is None:
        return f"key:{row.key}"
    return row.content_hash if row.slice_index is None else f"{row.content_hash}#z={row.slice_index}"


def _group_entry(
    rows: Sequence[ManifestRow], splits: Sequence[str | None], members: Sequence[int], name: str
) -> dict[str, Any]:
    """One group: member keys with their labels / splits / subjects (aligned lists) and what it spans."""
    labels = [rows[i].label for i in members]
    member_splits = [splits[i] for i in members]
    subjects = [rows[i].subject for i in members]
    return {
        "hash": name,
        "size": len(members),
        "keys": [rows[i].key for i in members],
        "labels": labels,
        "splits": member_splits,
        "subjects": subjects,
        "cross_class": len(set(labels)) > 1,
        "cross_split": len({s for s in member_splits if s}) > 1,
        "cross_subject": len({s for s in subjects if s}) > 1,
    }


def _worst_first(group: dict[str, Any]) -> tuple[bool, bool, int, str]:
    """Sort key: cross-class, then cross-split groups first (they bias evaluation), then bigger ones."""
    return (not group["cross_class"], not group["cross_split"], -group["size"], group["hash"])


def exact_groups(
    rows: Sequence[ManifestRow], splits: Sequence[str | None], identities: Sequence[str]
) -> list[dict[str, Any]]:
    """Groups of >= 2 rows that are the same image (same :func:`identity`), worst first."""
    members: dict[str, list[int]] = defaultdict(list)
    for i, ident in enumerate(identities):
        if not ident.startswith("key:"):
            members[ident].append(i)
    groups = [_group_entry(rows, splits, idx, ident) for ident, idx in members.items() if len(idx) > 1]
    return sorted(groups, key=_worst_first)


def near_groups(
    rows: Sequence[ManifestRow],
    splits: Sequence[str | None],
    identities: Sequence[str],
    images: np.ndarray,
    threshold: int,
    min_corr: float,
) -> list[dict[str, Any]]:
    """Connected components of verified near-duplicate links holding >= 2 distinct images."""
    if len(images) < 2:
        return []
    node, hashes, a, b = near_links(images, threshold, min_corr)
    graph = coo_matrix((np.ones(len(a), dtype=np.int32), (a, b)), shape=(len(hashes), len(hashes)))
    _, component_of_node = connected_components(graph, directed=False)
    component = component_of_node[node]

    members: dict[int, list[int]] = defaultdict(list)
    for row, comp in enumerate(component.tolist()):
        members[comp].append(row)
    groups = []
    for idx in members.values():
        if len({identities[k] for k in idx}) < 2:
            continue  # one image, or nothing but copies of one image (an exact-duplicate group)
        member_hashes = np.unique(hashes[node[idx]])
        entry = _group_entry(rows, splits, idx, f"{int(member_hashes[0]):016x}")
        entry["max_distance"] = max_hamming(member_hashes)
        groups.append(entry)
    return sorted(groups, key=_worst_first)
