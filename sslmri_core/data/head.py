"""The head in a grey slice, and the preprocessing built on it (``--preprocess``).

``crop``: the slice is cut to the head's bounding box (plus a margin) before it is padded square and
resized, so the model's pixels go to anatomy rather than to the black frame, and each source's framing
stops being a shortcut. ``norm``: the 1st-99th intensity percentiles inside the head become 0-255, so a
brighter or darker scanner gives the same input. Both run on the full-resolution slice at decode time.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

MASK_SIDE = 256  # the head mask of a larger slice is found on a copy this size (the box is scaled back)
MARGIN = 0.04  # share of the box's side added on each side of a head crop
MIN_HEAD_SHARE = 0.02  # a "head" smaller than this share of the slice is not trusted: no crop
NORM_PERCENTILES = (1.0, 99.0)


def brain_mask(image_u8: np.ndarray) -> np.ndarray:
    """Head/brain foreground of a grey slice: bool ``(H, W)``.

    Otsu threshold on the intensities, holes filled (dark CSF and lesions inside the head count),
    a small opening to cut thin noise bridges, then the largest connected component.
    """
    import cv2

    img = np.ascontiguousarray(image_u8, dtype=np.uint8)
    if int(img.max()) == int(img.min()):
        return np.zeros(img.shape, dtype=bool)
    level, _ = cv2.threshold(img, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    mask = img > level
    mask = ndimage.binary_fill_holes(mask)
    mask = ndimage.binary_opening(mask, structure=np.ones((3, 3), bool), iterations=max(1, img.shape[0] // 128))
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
    return ndimage.binary_fill_holes(labels == (int(np.argmax(sizes)) + 1))


def head_mask_full(gray: np.ndarray) -> np.ndarray:
    """:func:`brain_mask` of a slice of any size, found on a copy at most :data:`MASK_SIDE` px: bool ``(H, W)``."""
    import cv2

    h, w = gray.shape
    scale = MASK_SIDE / max(h, w)
    if scale >= 1:
        return brain_mask(gray)
    small = cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return cv2.resize(brain_mask(small).astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)


def head_box(mask: np.ndarray, margin: float = MARGIN) -> tuple[int, int, int, int] | None:
    """``(top, bottom, left, right)`` of the mask's bounding box grown by ``margin`` of its side, inside the
    image (bottom/right exclusive); None when the mask is under :data:`MIN_HEAD_SHARE` of the slice."""
    if mask.mean() < MIN_HEAD_SHARE:
        return None
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    pad_y, pad_x = round((bottom - top) * margin), round((right - left) * margin)
    h, w = mask.shape
    return max(0, top - pad_y), min(h, bottom + pad_y), max(0, left - pad_x), min(w, right + pad_x)


def normalize_in_head(gray: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """uint8 ``(H, W)`` with the head's 1st-99th percentiles stretched to 0-255 (clipped); the whole
    slice's non-zero pixels stand in for a missing head. A flat slice is returned unchanged."""
    inside = gray[mask] if mask.any() else gray[gray > 0]
    if inside.size == 0:
        return gray
    lo, hi = np.percentile(inside, NORM_PERCENTILES)
    if hi <= lo:
        return gray
    out = (gray.astype(np.float32) - float(lo)) / float(hi - lo) * 255.0
    return np.clip(out, 0, 255).astype(np.uint8)


def prepare(gray: np.ndarray, preprocess: str) -> np.ndarray:
    """A full-resolution uint8 slice ``(H, W)`` after ``preprocess`` (none | crop | norm | crop+norm):
    uint8 ``(h, w)``, the head's box when cropped."""
    from sslmri_core.config import PREPROCESS

    if preprocess not in PREPROCESS:
        raise ValueError(f"--preprocess must be one of {', '.join(PREPROCESS)}, got {preprocess!r}")
    if preprocess == "none":
        return gray
    mask = head_mask_full(gray)
    if "norm" in preprocess:
        gray = normalize_in_head(gray, mask)
    box = head_box(mask) if "crop" in preprocess else None
    if box is not None:
        top, bottom, left, right = box
        gray = gray[top:bottom, left:right]
    return np.ascontiguousarray(gray)
