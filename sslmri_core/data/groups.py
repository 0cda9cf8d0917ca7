"""Split groups: what must stay on one side of every split, and content comparison across sets.

A model can memorise a patient, or an image it has seen in another file. So the unit of every
split is a *group*:

* images with a subject id are grouped by subject;
* images are also linked by content: pixel-identical decodes, and near duplicates by the audit's
  rule (64-bit pHash within 4 bits *and* pixel correlation >= 0.96 of 64 px thumbnails, see
  :mod:`sslmri_core.data.audit.near`). A group is a connected component of both kinds of link, so an image
  without a subject id joins the subject whose image it copies, and a copy never straddles a split.
* constant (blank) images carry nothing to memorise and are never linked by content (otherwise
  every blank slice would tie unrelated subjects together).

Groups are computed on the images decoded at :data:`GROUP_SIZE` px whatever the training size, so
the split of a folder does not depend on ``--image-size``. A group's key is stable under adding or
removing unrelated files (``subject:<id>``, or ``content:<smallest pixel digest>``), which is what
lets the split assign each group by a hash of its key.

:class:`ContentIndex` holds the content of a set of images (an SSL pool, a model's training
images) so that another folder can be compared with it by content, not by path.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from sslmri_core.data.audit.hashing import phash64, popcount
from sslmri_core.data.audit.near import near_links, pixel_correlation

GROUP_SIZE = 64  # px: content groups and content comparisons use this decode, whatever the training size
NEAR_THRESHOLD = 4  # pHash bits (of 64)
NEAR_MIN_CORR = 0.96  # pixel correlation of the 64 px thumbnails
_BLOCK = 512


@dataclass(frozen=True)
class Grouping:
    """The split group of each image and how it was found.

    ``level``: ``subject`` (every image has a subject id), ``mixed`` (some have) or ``content``
    (none has: groups are exact / near-duplicate components only).
    """

    keys: list[str]  # (N,) group key per image
    level: str
    images_without_subject: int
    unjoined_without_subject: int  # images without an id that joined no subject's group

    @property
    def n_groups(self) -> int:
        return len(set(self.keys))

    def reasons(self) -> list[str]:
        """Why a split of these groups may still leak (empty: it cannot, as far as the data says)."""
        if self.level == "content":
            return ["no subject ids: split by content group (exact and near copies kept together); slices of "
                    "one patient that are not near copies may still sit on two sides"]
        if self.unjoined_without_subject:
            return [f"{self.unjoined_without_subject} image(s) without a subject id, grouped by content only"]
        return []


def pixel_digests(images: np.ndarray) -> list[str]:
    """Hex digest of each image's pixels ``(N, S, S)``: equal for pixel-identical decodes."""
    return [hashlib.blake2b(img.tobytes(), digest_size=8).hexdigest() for img in images]


def _constant(images: np.ndarray) -> np.ndarray:
    """bool ``(N,)``: images with a single grey level."""
    flat = images.reshape(len(images), -1)
    return flat.min(axis=1) == flat.max(axis=1) if len(images) else np.zeros(0, dtype=bool)


def content_grouping(subjects: Sequence[str | None], thumbs: np.ndarray) -> Grouping:
    """Groups of images ``thumbs`` (uint8 ``(N, 64, 64)``) with their ``subjects`` (None: unknown)."""
    n = len(subjects)
    if thumbs.shape[0] != n:
        raise ValueError(f"{thumbs.shape[0]} images for {n} subject entries: they must be aligned")
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    first_of: dict[str, int] = {}
    for i, s in enumerate(subjects):  # a star per subject links its images
        if s is not None:
            j = first_of.setdefault(s, i)
            if j != i:
                rows.append(np.array([j]))
                cols.append(np.array([i]))
    linkable = np.flatnonzero(~_constant(thumbs))
    if len(linkable) > 1:
        node, _, a, b = near_links(thumbs[linkable], NEAR_THRESHOLD, NEAR_MIN_CORR)
        first_of_node = np.full(int(node.max()) + 1, -1, dtype=np.int64)
        for k, nd in enumerate(node.tolist()):  # pixel-identical images: linked to their node's first
            if first_of_node[nd] < 0:
                first_of_node[nd] = k
            else:
                rows.append(linkable[[first_of_node[nd]]])
                cols.append(linkable[[k]])
        rows.append(linkable[first_of_node[a]])
        cols.append(linkable[first_of_node[b]])
    r = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64)
    graph = coo_matrix((np.ones(len(r), dtype=np.int8), (r, c)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    return _name_groups(list(subjects), component, pixel_digests(thumbs))


def _name_groups(subjects: list[str | None], component: np.ndarray, digests: list[str]) -> Grouping:
    """Stable keys per component: its subject id(s), else its smallest pixel digest."""
    members: dict[int, list[int]] = {}
    for i, comp in enumerate(component.tolist()):
        members.setdefault(comp, []).append(i)
    keys = [""] * len(subjects)
    unjoined = 0
    for idx in members.values():
        ids = sorted({s for s in (subjects[i] for i in idx) if s is not None})
        key = "subject:" + "+".join(ids) if ids else "content:" + min(digests[i] for i in idx)
        if not ids:
            unjoined += len(idx)
        for i in idx:
            keys[i] = key
    without = sum(s is None for s in subjects)
    level = "subject" if without == 0 else "content" if without == len(subjects) else "mixed"
    return Grouping(keys, level, without, unjoined)


@dataclass
class ContentIndex:
    """The content of a set of images, to find copies of it elsewhere: file-content hashes, pixel
    digests, pHashes ``(M,)`` and 64 px thumbnails ``(M, 64, 64)``."""

    content_hashes: np.ndarray  # str (M,)
    digests: np.ndarray  # str (M,)
    phash: np.ndarray  # uint64 (M,)
    thumbs: np.ndarray  # uint8 (M, 64, 64)

    @classmethod
    def build(cls, content_hashes: Sequence[str | None], thumbs: np.ndarray) -> ContentIndex:
        hashes = np.array([h or "" for h in content_hashes], dtype=str)
        phash = phash64(thumbs) if len(thumbs) else np.zeros(0, dtype=np.uint64)
        return cls(hashes, np.array(pixel_digests(thumbs), dtype=str), phash, thumbs)

    @classmethod
    def concat(cls, parts: Sequence[ContentIndex]) -> ContentIndex:
        return cls(np.concatenate([p.content_hashes for p in parts]), np.concatenate([p.digests for p in parts]),
                   np.concatenate([p.phash for p in parts]), np.concatenate([p.thumbs for p in parts]))

    @classmethod
    def hashes_only(cls, content_hashes: Sequence[str]) -> ContentIndex:
        """An index that finds exact file copies only (when the images themselves are gone)."""
        return cls(np.array(list(content_hashes), dtype=str), np.zeros(0, dtype=str), np.zeros(0, dtype=np.uint64),
                   np.zeros((0, GROUP_SIZE, GROUP_SIZE), dtype=np.uint8))

    def __len__(self) -> int:
        return len(self.digests)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, content_hashes=self.content_hashes, digests=self.digests, phash=self.phash,
                            thumbs=self.thumbs)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ContentIndex:
        with np.load(path, allow_pickle=False) as f:
            return cls(f["content_hashes"], f["digests"], f["phash"], f["thumbs"])

    def matches(self, content_hashes: Sequence[str | None], thumbs: np.ndarray) -> np.ndarray:
        """bool ``(N,)``: which of the given images (hashes, 64 px ``thumbs (N, 64, 64)``) are in this
        set as an exact copy (same file bytes or same pixels) or a near copy (the audit's rule)."""
        query = ContentIndex.build(content_hashes, thumbs)
        own_hashes = set(self.content_hashes.tolist()) - {""}
        own_digests = set(self.digests.tolist())
        pairs = zip(query.content_hashes.tolist(), query.digests.tolist(), strict=True)
        found = np.array([(h in own_hashes) or (d in own_digests) for h, d in pairs], dtype=bool)
        if len(self) == 0 or len(query) == 0:
            return found
        linkable_q = np.flatnonzero(~found & ~_constant(thumbs))
        linkable_i = np.flatnonzero(~_constant(self.thumbs))
        qi, ii = _cross_pairs(query.phash[linkable_q], self.phash[linkable_i], NEAR_THRESHOLD)
        if len(qi):
            both = np.concatenate([thumbs[linkable_q[qi]], self.thumbs[linkable_i[ii]]])
            a = np.arange(len(qi))
            near = pixel_correlation(both, a, a + len(qi)) >= NEAR_MIN_CORR
            found[linkable_q[qi[near]]] = True
        return found


def _cross_pairs(left: np.ndarray, right: np.ndarray, threshold: int) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs ``(i, j)`` with uint64 ``left[i]`` and ``right[j]`` within ``threshold`` bits."""
    found_i: list[np.ndarray] = [np.zeros(0, dtype=np.intp)]
    found_j: list[np.ndarray] = [np.zeros(0, dtype=np.intp)]
    for start in range(0, len(left), _BLOCK):
        block = left[start : start + _BLOCK]
        i, j = np.nonzero(popcount(block[:, None] ^ right[None, :]) <= threshold)
        found_i.append(i + start)
        found_j.append(j)
    return np.concatenate(found_i), np.concatenate(found_j)
