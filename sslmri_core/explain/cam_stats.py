"""Statistics of one CAM heat map: pure NumPy/SciPy on ``(H, W)`` arrays, no model involved.

Every map here is already normalised to [0, 1] per scan (what pytorch-grad-cam returns); the raw,
unnormalised statistics that make maps comparable across scans are taken in :mod:`explain`.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


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


def intensity(cam: np.ndarray) -> float:
    """Mean of the normalised map (0: nothing activated, 1: everything at the maximum)."""
    return float(np.mean(cam))


def area_pct(cam: np.ndarray, threshold: float) -> float:
    """Percentage of pixels whose normalised activation is at or above ``threshold``."""
    return float(np.mean(cam >= threshold) * 100.0)


def energy_share(cam: np.ndarray, mask: np.ndarray | None) -> float | None:
    """Share of the map's total activation that falls inside ``mask`` (None: no mask or no activation)."""
    if mask is None or not mask.any():
        return None
    total = float(cam.sum())
    if total <= 0.0:
        return None
    return float(cam[mask].sum() / total)


def pointing_hit(cam: np.ndarray, mask: np.ndarray | None, dilate_px: int = 3) -> bool | None:
    """Pointing game: is the map's maximum inside the lesion (dilated by ``dilate_px``)? None without a lesion."""
    if mask is None or not mask.any() or float(cam.max()) <= 0.0:
        return None
    if dilate_px > 0:
        mask = ndimage.binary_dilation(mask, iterations=dilate_px)
    peak = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return bool(mask[peak])


def top_fraction_mask(cam: np.ndarray, pct: float) -> np.ndarray:
    """The ``pct`` % most activated pixels (exactly ``round(pct% * H*W)`` of them, ties broken by position)."""
    k = round(float(cam.size * pct) / 100.0)  # an int, even for a numpy pct under numpy 1
    out = np.zeros(cam.size, dtype=bool)
    if k > 0:
        out[np.argsort(-cam.ravel(), kind="stable")[:k]] = True
    return out.reshape(cam.shape)


def random_blob_mask(shape: tuple[int, int], pct: float, rng: np.random.Generator, grid: int = 8) -> np.ndarray:
    """A random region of the same size as :func:`top_fraction_mask` removes, made of smooth blobs.

    Random single pixels would be a much weaker perturbation than a CAM's contiguous top region
    (a blurred-in pixel is nearly its old value), so the baseline thresholds smooth noise instead:
    a ``grid x grid`` field upsampled to ``shape``, like a CAM from a last-stage feature map.
    """
    noise = rng.random((grid, grid))
    field = ndimage.zoom(noise, (shape[0] / grid, shape[1] / grid), order=1)[: shape[0], : shape[1]]
    field = np.pad(field, ((0, shape[0] - field.shape[0]), (0, shape[1] - field.shape[1])), mode="edge")
    return top_fraction_mask(field, pct)


def map_stats(
    cam: np.ndarray,
    *,
    threshold: float,
    brain: np.ndarray | None,
    lesion: np.ndarray | None,
    dilate_px: int = 3,
) -> dict[str, float | bool | None]:
    """Per-scan statistics of a normalised map ``(H, W)``; masks are bool ``(H, W)`` or None."""
    return {
        "intensity": intensity(cam),
        "area_pct": area_pct(cam, threshold),
        "threshold": float(threshold),
        "in_brain": energy_share(cam, brain),
        "pointing_hit": pointing_hit(cam, lesion, dilate_px),
        "lesion_energy": energy_share(cam, lesion),
    }
