"""Labelled image sets ready for training, built from a folder's manifest and the image cache."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sslmri_core.data.groups import GROUP_SIZE, Grouping, content_grouping
from sslmri_core.data.manifest import Manifest, ManifestRow
from sslmri_core.data.sources import DataError

__all__ = ["DataError", "ImageSet", "concat_sets", "from_manifest", "load_folder"]


@dataclass
class ImageSet:
    """Decoded images and what is known about each.

    ``images``: uint8 ``(N, size, size)``; ``items[i]`` (a manifest row) describes ``images[i]``;
    ``unusable`` lists ``(path, reason)`` for every file that could not be used.
    """

    root: str
    images: np.ndarray
    items: list[ManifestRow]
    classes: list[str]
    unusable: list[tuple[str, str]] = field(default_factory=list)
    manifests: list[Manifest] = field(default_factory=list)
    thumbs: np.ndarray | None = None  # uint8 (N, 64, 64): the GROUP_SIZE decode that groups and content checks use
    grouping: Grouping | None = None  # the split group of each image (subject, else duplicate component)

    @property
    def labels(self) -> np.ndarray:
        """Class indices ``(N,)`` into ``classes``."""
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index[it.label] for it in self.items], dtype=np.int64)

    @property
    def subjects(self) -> list[str | None]:
        return [it.subject for it in self.items]

    @property
    def hashes(self) -> list[str | None]:
        return [it.content_hash for it in self.items]

    @property
    def given_splits(self) -> list[str | None]:
        return [it.given_split for it in self.items]


def load_folder(
    root: str | Path,
    size: int,
    subject_pattern: str | None = None,
    class_map: dict[str, str] | None = None,
    preprocess: str = "none",
) -> ImageSet:
    """Every usable image under ``root`` at ``size`` px after ``preprocess`` (decoded once, then from the
    cache). Groups and content checks always use the plain decode (``thumbs``)."""
    from sslmri_core.data.ingest import build_manifest

    root = Path(root).expanduser().resolve()  # stored and compared as one absolute path, however it was typed
    manifest, images = build_manifest(root, size, subject_pattern, class_map, preprocess=preprocess)
    data = from_manifest(manifest, images)
    if not data.items:
        first = data.unusable[0] if data.unusable else None
        raise DataError(
            f"no usable images in {root}: {len(manifest.files())} file(s) found, all unusable"
            + (f" (first: {first[0]}: {first[1]})" if first else " (expected ROOT/<class>/<image>)")
        )
    plain = size == GROUP_SIZE and preprocess == "none"
    data.thumbs = images if plain else _group_decode(root, data.items, subject_pattern, class_map)
    data.grouping = content_grouping(data.subjects, data.thumbs)
    return data


def _group_decode(root: Path, items: list[ManifestRow], subject_pattern: str | None,
                  class_map: dict[str, str] | None) -> np.ndarray:
    """The images of ``items`` decoded at GROUP_SIZE (through the cache), uint8 ``(N, 64, 64)``."""
    from sslmri_core.data.ingest import build_manifest

    manifest, small = build_manifest(root, GROUP_SIZE, subject_pattern, class_map)
    where = {r.key: i for i, r in enumerate(manifest.usable)}
    missing = [it.key for it in items if it.key not in where]
    if missing:
        raise DataError(f"{root} changed while it was read ({missing[0]} vanished); run the command again")
    return small[[where[it.key] for it in items]]


def from_manifest(manifest: Manifest, images: np.ndarray) -> ImageSet:
    """The image set of a manifest; ``images`` ``(N, S, S)`` in ``manifest.usable`` order."""
    usable = manifest.usable
    unusable = sorted({(r.path, r.reason or "") for r in manifest.unusable})
    return ImageSet(manifest.root, images, usable, sorted({r.label for r in usable}), unusable, [manifest])


def concat_sets(sets: list[ImageSet]) -> ImageSet:
    """Join image sets (for pretraining on several folders; labels are kept but not used)."""
    if len(sets) == 1:
        return sets[0]
    groupings = [s.grouping for s in sets]
    grouping = None
    if all(g is not None for g in groupings):
        levels = {g.level for g in groupings if g is not None}
        grouping = Grouping(
            [k for g in groupings if g is not None for k in g.keys],
            levels.pop() if len(levels) == 1 else "mixed",
            sum(g.images_without_subject for g in groupings if g is not None),
            sum(g.unjoined_without_subject for g in groupings if g is not None),
        )
    thumbs = [s.thumbs for s in sets]
    return ImageSet(
        ",".join(s.root for s in sets),
        np.concatenate([s.images for s in sets]),
        [it for s in sets for it in s.items],
        sorted({c for s in sets for c in s.classes}),
        [u for s in sets for u in s.unusable],
        [m for s in sets for m in s.manifests],
        np.concatenate(thumbs) if all(t is not None for t in thumbs) else None,  # type: ignore[arg-type]
        grouping,
    )
