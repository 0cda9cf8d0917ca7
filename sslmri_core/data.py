"""Labelled image sets ready for training, built from a folder's manifest and the image cache."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sslmri_core.manifest import Manifest, ManifestRow
from sslmri_core.sources import DataError

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
) -> ImageSet:
    """Every usable image under ``root`` at ``size`` px (decoded once, then from the cache)."""
    from sslmri_core.ingest import build_manifest

    manifest, images = build_manifest(root, size, subject_pattern, class_map)
    data = from_manifest(manifest, images)
    if not data.items:
        first = data.unusable[0] if data.unusable else None
        raise DataError(
            f"no usable images in {root}: {len(manifest.files())} file(s) found, all unusable"
            + (f" (first: {first[0]}: {first[1]})" if first else " (expected ROOT/<class>/<image>)")
        )
    return data


def from_manifest(manifest: Manifest, images: np.ndarray) -> ImageSet:
    """The image set of a manifest; ``images`` ``(N, S, S)`` in ``manifest.usable`` order."""
    usable = manifest.usable
    unusable = sorted({(r.path, r.reason or "") for r in manifest.unusable})
    return ImageSet(manifest.root, images, usable, sorted({r.label for r in usable}), unusable, [manifest])


def concat_sets(sets: list[ImageSet]) -> ImageSet:
    """Join image sets (for pretraining on several folders; labels are kept but not used)."""
    if len(sets) == 1:
        return sets[0]
    return ImageSet(
        ",".join(s.root for s in sets),
        np.concatenate([s.images for s in sets]),
        [it for s in sets for it in s.items],
        sorted({c for s in sets for c in s.classes}),
        [u for s in sets for u in s.unusable],
        [m for s in sets for m in s.manifests],
    )
