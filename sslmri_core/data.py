"""Labelled image folders: find the images, their class and subject, and decode them for training.

Layout: ``ROOT/<class>/.../<image>`` (the image's parent folder names its class). A file
``X_mask.png`` beside ``X.png`` is X's lesion mask, not an image. Unreadable files are never
fatal and never silently dropped: each is listed with the reason it was not used.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
MASK_SUFFIX = "_mask"
# Named subject-id patterns of the layouts we know; the first that matches a file name wins.
SUBJECT_PATTERNS: dict[str, str] = {
    "bids": r"(sub-[A-Za-z0-9]+)",
    "oasis": r"(OAS\d_\d{4})",
    "patient": r"(patient\d+)",
}
MAX_PIXELS = 64_000_000  # larger images are refused as probable decompression bombs


class DataError(ValueError):
    """A data folder cannot be used (missing, empty, or nothing usable in it)."""


@dataclass(frozen=True)
class Item:
    """One image file and what we know about it."""

    path: str
    label: str
    subject: str | None
    mask_path: str | None = None


@dataclass
class ImageSet:
    """Decoded images ready for training.

    ``images``: uint8 array ``(N, size, size)``; ``items[i]`` describes ``images[i]``;
    ``unusable`` lists ``(path, reason)`` for every file that could not be used.
    """

    root: str
    images: np.ndarray
    items: list[Item]
    classes: list[str]
    unusable: list[tuple[str, str]] = field(default_factory=list)

    @property
    def labels(self) -> np.ndarray:
        """Class indices ``(N,)`` into ``classes``."""
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index[it.label] for it in self.items], dtype=np.int64)

    @property
    def subjects(self) -> list[str | None]:
        return [it.subject for it in self.items]

    def class_counts(self) -> dict[str, int]:
        counts = Counter(it.label for it in self.items)
        return {c: counts.get(c, 0) for c in self.classes}


def parse_subject(name: str, pattern: str | None = None) -> str | None:
    """Subject id in a file name: from ``pattern`` (a regex; group 1 or the whole match) or a known layout."""
    patterns = [pattern] if pattern else list(SUBJECT_PATTERNS.values())
    for pat in patterns:
        match = re.search(pat, name)
        if match:
            return match.group(1) if match.groups() else match.group(0)
    return None


def _walk(root: Path) -> list[Path]:
    """Every file under ``root`` (symlinked folders are not followed: no loops)."""
    found: list[Path] = []
    for dirpath, _dirs, files in os.walk(root, followlinks=False):
        found.extend(Path(dirpath) / f for f in files)
    return sorted(found)


def scan_folder(root: str | Path, subject_pattern: str | None = None) -> tuple[list[Item], list[tuple[str, str]]]:
    """List the images under ``root`` with class and subject; also ``(path, reason)`` of skipped files."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    items: list[Item] = []
    skipped: list[tuple[str, str]] = []
    files = _walk(root)
    present = set(files)
    for path in files:
        ext = path.suffix.lower()
        if ext not in IMAGE_EXTS:
            if path.name not in {"synth.json"} and not path.name.startswith("."):
                skipped.append((str(path), f"not an image file type ({ext or 'no extension'})"))
            continue
        if path.stem.endswith(MASK_SUFFIX) and path.with_name(path.stem[: -len(MASK_SUFFIX)] + path.suffix) in present:
            continue  # a lesion mask: read alongside its image, not an image itself
        if path.parent == root:
            skipped.append((str(path), "image directly in the data folder: put it in a folder named after its class"))
            continue
        mask = path.with_name(path.stem + MASK_SUFFIX + path.suffix)
        items.append(
            Item(
                path=str(path),
                label=path.parent.name,
                subject=parse_subject(path.name, subject_pattern),
                mask_path=str(mask) if mask in present else None,
            )
        )
    return items, skipped


def decode_image(path: str, size: int) -> np.ndarray:
    """Read any image mode as grayscale, pad to square (keeps aspect), resize: uint8 ``(size, size)``."""
    with Image.open(path) as img:
        if img.width * img.height > MAX_PIXELS:
            raise ValueError(f"image too large ({img.width}x{img.height}), refused as a possible decompression bomb")
        img.load()
        if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            arr = np.asarray(img, dtype=np.float32)
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
            gray = Image.fromarray(arr.astype(np.uint8))
        else:
            gray = img.convert("L")
    side = max(gray.width, gray.height)
    square = Image.new("L", (side, side), 0)
    square.paste(gray, ((side - gray.width) // 2, (side - gray.height) // 2))
    return np.asarray(square.resize((size, size), Image.BILINEAR), dtype=np.uint8)


def _try_decode(path: str, size: int) -> np.ndarray | str:
    try:
        return decode_image(path, size)
    except Exception as exc:  # every failure becomes a reported reason, never a crash
        return f"cannot decode: {exc.__class__.__name__}: {exc}".strip()


def load_folder(root: str | Path, size: int, subject_pattern: str | None = None, workers: int = 4) -> ImageSet:
    """Scan ``root`` and decode every usable image to ``(N, size, size)`` uint8."""
    items, unusable = scan_folder(root, subject_pattern)
    with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL decoding releases the GIL
        decoded = list(pool.map(lambda it: _try_decode(it.path, size), items))
    kept: list[Item] = []
    arrays: list[np.ndarray] = []
    for item, result in zip(items, decoded):
        if isinstance(result, str):
            unusable.append((item.path, result))
        else:
            kept.append(item)
            arrays.append(result)
    if not kept:
        raise DataError(
            f"no usable images in {root}: {len(items)} image file(s) found, "
            f"{len(unusable)} file(s) unusable (expected ROOT/<class>/<image>.png|jpg|...)"
        )
    classes = sorted({it.label for it in kept})
    return ImageSet(str(root), np.stack(arrays), kept, classes, unusable)


def concat_sets(sets: list[ImageSet]) -> ImageSet:
    """Join image sets (for pretraining on several folders; labels are kept but not used)."""
    if len(sets) == 1:
        return sets[0]
    classes = sorted({c for s in sets for c in s.classes})
    return ImageSet(
        ",".join(s.root for s in sets),
        np.concatenate([s.images for s in sets]),
        [it for s in sets for it in s.items],
        classes,
        [u for s in sets for u in s.unusable],
    )
