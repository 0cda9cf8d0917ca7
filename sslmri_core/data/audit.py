"""Data audit: duplicates, near-duplicates, subject leaks, acquisition confounds, balance.

``audit_dataset(manifest, images, split_of)`` checks the usable rows of a manifest together with
their decoded images (uint8 ``(N, S, S)``, in ``manifest.usable`` order) and returns an
:class:`AuditReport`. The rules:

**Splits.** ``split_of`` (row key -> ``train|val|test``) when given (``split_source="provided"``),
else each row's ``given_split`` when any row has one (``"given"``), else none (``"none"``). Rows
without a split are ignored by every cross-split count.

**Exact duplicates.** Groups of >= 2 usable rows with the same ``content_hash`` (and the same
``slice_index``: the slices of one NIfTI volume share the volume's hash but are different
images). ``duplicate_groups`` counts the groups, ``duplicate_images`` their members and
``redundant_images`` the copies beyond the first of each. ``cross_class_duplicates`` counts the
groups whose members carry > 1 label, ``cross_split_duplicates`` the groups whose members sit in
> 1 split (0 without split information), ``cross_subject_duplicates`` those spanning > 1 subject.

**Near duplicates.** Candidates: 64-bit pHash (``imagehash.phash`` of each decoded image) within
``near_threshold`` bits (default 4; pHash sets 32 of its 64 bits unless DCT values tie at the
median, so distances are almost always even and 4 means "two bits moved"). Confirmed: the Pearson
correlation of the two images' pixels, on 64 x 64 area-averaged thumbnails (so a 64 or a 128 px
cache give nearly the same answer), is >= ``near_min_corr`` (default 0.96;
brightness/contrast-invariant, two blank images count as 1). pHash alone is not enough for brain
MRI: every slice at one level has the same coarse layout, and on the tumour set 4 bits linked 30
pairs of *different patients in different classes*. Among all pHash candidates on the four real
sets (tumour, Parkinson's, OASIS, MS), the highest correlation between images of different classes
or subjects was 0.948 (top slices of two OASIS subjects), while true copies, re-encoded or
re-windowed, correlate >= 0.99 and neighbouring slices of one scan 0.95-0.99. (At 32 px the shared
black background lifts such pairs to 0.97, hence 64 px.) ``near_min_corr=0`` gives pure pHash.

Near-duplicate groups are the connected components of the confirmed links (so a chain a~b~c is one group even
when a and c differ: ``max_distance`` is the group's largest pairwise pHash distance, its
diameter). A group is counted only when it holds at least two *different* images (two distinct
content hashes): a group that is nothing but one exact-duplicate group is already counted above.
Pixel-identical images are one node, candidate search is a vectorised XOR + popcount over the
distinct hash values in row blocks: about a second for 6,000 images. Neighbouring slices of one
scan are near duplicates by nature (a whole OASIS scan stack chains into one group), so
``cross_subject_near_duplicates`` counts the groups that span subjects: the suspicious ones when
subjects are known. ``cross_class_near_duplicates`` and ``cross_split_near_duplicates`` as for
exact duplicates.

**Subject leaks.** Subjects whose usable rows fall into > 1 split. ``subject_leaks`` is their
count; ``subjects_spanning_classes`` counts subjects with images in > 1 class (a labelling
problem, or slice-level labels such as lesion / no lesion).

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

**Balance.** ``class_balance``: images per class, ``imbalance_ratio`` (largest / smallest),
majority class and rate. ``slices_per_subject``: null without subject ids, else min / median /
max / mean images per subject over rows with a subject, and subjects per class.

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

import hashlib
import math
import warnings
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import imagehash
import numpy as np
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.stats import binomtest

from .manifest import Manifest, ManifestRow

CONFOUND_MIN_LIFT = 0.10  # accuracy above max(majority rate, baseline accuracy)
CONFOUND_MAX_P = 0.01  # one-sided binomial test against that rate
CONFOUND_MIN_IMAGES = 10
CONFOUND_MAX_FOLDS = 5
FOREST_TREES = 50  # 100 gave the same accuracy to +-0.005 on the tumour set, at twice the time
LIST_CAP = 200  # entries per list in to_json
MEMBER_CAP = 50  # keys per group in to_json
_BLOCK = 512  # rows per XOR block: 512 x 6,000 uint64 = 24 MB
_HIST_BLOCK = 256  # images per histogram block
_PAIR_BLOCK = 256  # candidate pairs per correlation block: 2 x 256 x 128^2 float32 = 32 MB at most
CORR_SIDE = 64  # near-duplicate pixel correlation is measured on 64 x 64 thumbnails
METADATA_FEATURES = ("width", "height", "mode", "bit_depth")
INTENSITY_FEATURES = ("mean", "std", "p5", "p25", "p50", "p75", "p95", "black_share", "saturated_share")
_PERCENTILES = (5, 25, 50, 75, 95)


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
    identities = [_identity(r) for r in rows]

    dup_groups = _exact_groups(rows, splits, identities)
    near_groups = _near_groups(rows, splits, identities, images, near_threshold, near_min_corr)
    leaks = _subject_leaks(rows, splits)
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
        "near_duplicate_groups": len(near_groups),
        "near_duplicate_images": sum(g["size"] for g in near_groups),
        "cross_class_near_duplicates": sum(g["cross_class"] for g in near_groups),
        "cross_split_near_duplicates": sum(g["cross_split"] for g in near_groups),
        "cross_subject_near_duplicates": sum(g["cross_subject"] for g in near_groups),
        "subject_leaks": len(leaks),
        "subjects_spanning_classes": _subjects_spanning_classes(rows),
        "confound": confound,
        "class_balance": class_balance([r.label for r in rows]),
        "slices_per_subject": slices_per_subject(rows),
    }
    return AuditReport(_jsonable(summary), _jsonable(dup_groups), _jsonable(near_groups), _jsonable(leaks))


# ---------------------------------------------------------------- inputs


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


def _identity(row: ManifestRow) -> str:
    """What makes two rows the same image: file hash plus slice index; the key when unhashed."""
    if row.content_hash is None:
        return f"key:{row.key}"
    return row.content_hash if row.slice_index is None else f"{row.content_hash}#z={row.slice_index}"


# ---------------------------------------------------------------- groups


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


def _exact_groups(
    rows: Sequence[ManifestRow], splits: Sequence[str | None], identities: Sequence[str]
) -> list[dict[str, Any]]:
    members: dict[str, list[int]] = defaultdict(list)
    for i, ident in enumerate(identities):
        if not ident.startswith("key:"):
            members[ident].append(i)
    groups = [_group_entry(rows, splits, idx, ident) for ident, idx in members.items() if len(idx) > 1]
    return sorted(groups, key=_worst_first)


# ---------------------------------------------------------------- perceptual hashes


def phash64(images: np.ndarray) -> np.ndarray:
    """``imagehash.phash`` of each image as uint64 ``(N,)`` (bit 63 = the hash's first bit)."""
    out = np.zeros(len(images), dtype=np.uint64)
    for i, img in enumerate(images):
        bits = imagehash.phash(Image.fromarray(img)).hash.ravel()
        out[i] = np.packbits(bits).view(">u8")[0]
    return out


_POP8 = np.array([bin(v).count("1") for v in range(256)], dtype=np.uint8)


def _popcount(words: np.ndarray) -> np.ndarray:
    """Set bits per uint64, same shape, uint8 (``np.bitwise_count`` from numpy 2.0; a byte table before)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(words)
    as_bytes = words.view(np.uint8).reshape(*words.shape, 8)
    return _POP8[as_bytes].sum(axis=-1, dtype=np.uint8)


def hamming_pairs(hashes: np.ndarray, threshold: int) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs ``i < j`` of uint64 ``hashes (U,)`` within ``threshold`` bits, as two int arrays."""
    found_i: list[np.ndarray] = []
    found_j: list[np.ndarray] = []
    for start in range(0, len(hashes), _BLOCK):
        block = hashes[start : start + _BLOCK]
        dist = _popcount(block[:, None] ^ hashes[None, start:])  # only columns >= start: upper triangle
        i, j = np.nonzero(dist <= threshold)
        keep = j > i  # j is relative to `start`, as is i: drops the diagonal and the lower triangle
        found_i.append(i[keep] + start)
        found_j.append(j[keep] + start)
    if not found_i:
        return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp)
    return np.concatenate(found_i), np.concatenate(found_j)


def max_hamming(hashes: np.ndarray) -> int:
    """Largest pairwise Hamming distance among uint64 ``hashes (U,)`` (0 for fewer than two)."""
    best = 0
    for start in range(0, len(hashes), _BLOCK):
        block = hashes[start : start + _BLOCK]
        best = max(best, int(_popcount(block[:, None] ^ hashes[None, :]).max(initial=0)))
    return best


def _pixel_nodes(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Collapse pixel-identical images: node id per image ``(N,)`` and one image index per node ``(P,)``.

    Exact copies and identical blank slices become one node, so they cost one hash and no pairs."""
    node_of: dict[bytes, int] = {}
    node = np.empty(len(images), dtype=np.intp)
    representative: list[int] = []
    for i, img in enumerate(images):
        digest = hashlib.blake2b(img.tobytes(), digest_size=16).digest()
        if digest not in node_of:
            node_of[digest] = len(representative)
            representative.append(i)
        node[i] = node_of[digest]
    return node, np.array(representative, dtype=np.intp)


def _candidate_pairs(hashes: np.ndarray, threshold: int) -> tuple[np.ndarray, np.ndarray]:
    """Node pairs ``a < b`` whose uint64 ``hashes (P,)`` are within ``threshold`` bits."""
    unique, inverse = np.unique(hashes, return_inverse=True)
    inverse = inverse.ravel()
    order = np.argsort(inverse, kind="stable")
    starts = np.searchsorted(inverse[order], np.arange(len(unique) + 1))
    bucket = [order[starts[k] : starts[k + 1]] for k in range(len(unique))]
    ui, uj = hamming_pairs(unique, threshold)
    pairs = [np.array(np.meshgrid(bucket[u], bucket[v])).reshape(2, -1) for u, v in zip(ui.tolist(), uj.tolist())]
    for members in bucket:  # nodes sharing one hash value are candidates too
        if len(members) > 1:
            pairs.append(members[np.array(np.triu_indices(len(members), 1))])
    if not pairs:
        return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp)
    both = np.concatenate(pairs, axis=1)
    return both.min(axis=0), both.max(axis=0)


def thumbnails(images: np.ndarray, side: int = CORR_SIDE) -> np.ndarray:
    """uint8 ``(N, side, side)`` area-averaged copies (unchanged when ``S <= side``).

    A fixed size keeps the near-duplicate rule nearly independent of the cache size: on the tumour
    set a 64 and a 128 px cache give 2,346 and 2,275 confirmed links (full-size correlation
    drifts further as more detail is kept)."""
    if images.shape[-1] <= side:
        return images
    return np.stack([np.asarray(Image.fromarray(img).resize((side, side), Image.BOX)) for img in images])


def pixel_correlation(images: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of the pixels of ``images[a[k]]`` and ``images[b[k]]``: float ``(K,)``.

    Invariant to brightness and contrast; two constant (blank) images count as 1, one blank as 0."""
    out = np.zeros(len(a), dtype=np.float64)
    for start in range(0, len(a), _PAIR_BLOCK):
        x = images[a[start : start + _PAIR_BLOCK]].reshape(-1, images[0].size).astype(np.float32)
        y = images[b[start : start + _PAIR_BLOCK]].reshape(-1, images[0].size).astype(np.float32)
        x -= x.mean(axis=1, keepdims=True)
        y -= y.mean(axis=1, keepdims=True)
        norm_x, norm_y = np.linalg.norm(x, axis=1), np.linalg.norm(y, axis=1)
        dot = np.einsum("ij,ij->i", x, y)
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = np.where((norm_x > 0) & (norm_y > 0), dot / (norm_x * norm_y), 0.0)
        out[start : start + len(x)] = np.where((norm_x == 0) & (norm_y == 0), 1.0, corr)
    return out


def near_links(
    images: np.ndarray, threshold: int = 4, min_corr: float = 0.96
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The near-duplicate rule on uint8 ``images (N, S, S)``.

    Returns the pixel-identical node of each image ``(N,)``, each node's pHash ``(P,)`` and the
    confirmed node pairs ``a, b`` (``(L,)`` each): pHash within ``threshold`` bits and pixel
    correlation of the 64 px thumbnails >= ``min_corr``. The split's content groups and the audit
    share this one rule.
    """
    node, representative = _pixel_nodes(images)
    hashes = phash64(images[representative])
    a, b = _candidate_pairs(hashes, threshold)
    if len(a):
        keep = pixel_correlation(thumbnails(images[representative]), a, b) >= min_corr
        a, b = a[keep], b[keep]
    return node, hashes, a, b


def _near_groups(
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
    for idx, comp in enumerate(component.tolist()):
        members[comp].append(idx)
    groups = []
    for idx in members.values():
        if len({identities[k] for k in idx}) < 2:
            continue  # one image, or nothing but copies of one image (an exact-duplicate group)
        member_hashes = np.unique(hashes[node[idx]])
        entry = _group_entry(rows, splits, idx, f"{int(member_hashes[0]):016x}")
        entry["max_distance"] = max_hamming(member_hashes)
        groups.append(entry)
    return sorted(groups, key=_worst_first)


# ---------------------------------------------------------------- subjects and balance


def _subject_leaks(rows: Sequence[ManifestRow], splits: Sequence[str | None]) -> list[dict[str, Any]]:
    """Subjects whose images sit in more than one split, most images first."""
    in_splits: dict[str, set[str]] = defaultdict(set)
    counts: Counter[str] = Counter()
    for row, split in zip(rows, splits):
        if row.subject:
            counts[row.subject] += 1
            if split:
                in_splits[row.subject].add(split)
    leaks = [
        {"subject": s, "splits": sorted(sp), "images": counts[s]} for s, sp in in_splits.items() if len(sp) > 1
    ]
    return sorted(leaks, key=lambda x: (-x["images"], x["subject"]))


def _subjects_spanning_classes(rows: Sequence[ManifestRow]) -> int:
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


# ---------------------------------------------------------------- confound check


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
    names = [f"subject:{r.subject}" if r.subject else f"copy:{ident}" for r, ident in zip(rows, identities)]
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
    identities = list(identities) if identities is not None else [_identity(r) for r in rows]
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
    result["features"] = [n for n, spread in zip(names, np.ptp(meta, axis=0)) if spread > 0]
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


# ---------------------------------------------------------------- JSON


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
