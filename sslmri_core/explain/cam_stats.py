"""Statistics of one CAM heat map: pure NumPy/SciPy on ``(H, W)`` arrays, no model involved.

Every map here is already normalised to [0, 1] per scan (what pytorch-grad-cam returns); the raw,
unnormalised statistics that make maps comparable across scans are taken in :mod:`explain`.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from sslmri_core.data.head import brain_mask as brain_mask  # the head mask lives with the data


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


def peak_location(cam: np.ndarray, sigma: float | None = None) -> tuple[int, int]:
    """``(row, col)`` of a map's peak ``(H, W)``: the centre of the smoothed map's top plateau.

    An upsampled coarse map (2x2-4x4 cells at the last stage) is made of flat plateaus, and a bare
    ``argmax`` takes the plateau's first pixel: its top-left corner, often outside the structure the
    cell stands for. The map is smoothed first (Gaussian, ``sigma`` = side / 32 by default; zero
    outside the image, so a plateau touching the border peaks inside it), and of the pixels within
    1e-3 of the smoothed maximum (the plateau that survives smoothing), the one closest to the
    centroid of the argmax's connected component is taken.
    """
    side = min(cam.shape)
    s = max(1.0, side / 32) if sigma is None else float(sigma)
    smooth = ndimage.gaussian_filter(cam.astype(np.float64), s, mode="constant") if s > 0 else cam.astype(np.float64)
    hi, lo = float(smooth.max()), float(smooth.min())
    top = smooth >= hi - 1e-3 * max(hi - lo, 1e-12)
    labels, _ = ndimage.label(top)
    first = np.unravel_index(int(np.argmax(smooth)), smooth.shape)
    ys, xs = np.nonzero(labels == labels[first])
    j = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))  # a pixel of the plateau even if it is not convex
    return int(ys[j]), int(xs[j])


def pointing_hit(cam: np.ndarray, mask: np.ndarray | None, dilate_px: int = 3) -> bool | None:
    """Pointing game: is the map's peak (:func:`peak_location`) inside the lesion dilated by ``dilate_px``?
    None without a lesion or without any activation."""
    if mask is None or not mask.any() or float(cam.max()) <= 0.0:
        return None
    if dilate_px > 0:
        mask = ndimage.binary_dilation(mask, iterations=dilate_px)
    return bool(mask[peak_location(cam)])


def pointing_chance(head: np.ndarray | None, mask: np.ndarray | None, dilate_px: int = 3) -> float | None:
    """Hit rate of a pointing game played by a random point inside the head: the share of the head
    ``(H, W)`` covered by the lesion dilated by ``dilate_px`` (as :func:`pointing_hit` dilates it).
    None without a lesion or a head."""
    if mask is None or not mask.any() or head is None or not head.any():
        return None
    if dilate_px > 0:
        mask = ndimage.binary_dilation(mask, iterations=dilate_px)
    return float((mask & head).sum() / head.sum())


def top_fraction_mask(cam: np.ndarray, pct: float) -> np.ndarray:
    """The ``pct`` % most activated pixels (exactly ``round(pct% * H*W)`` of them, ties broken by position)."""
    return _top_k(cam, top_k_count(cam.size, pct))


def top_k_count(n_pixels: int, pct: float) -> int:
    """``k``: how many of ``n_pixels`` the top ``pct`` % is (the deletion test's region size)."""
    return round(float(n_pixels * pct) / 100.0)  # an int, even for a numpy pct under numpy 1


def random_blob_mask(shape: tuple[int, int], pct: float, rng: np.random.Generator, grid: int = 8) -> np.ndarray:
    """A random region of the same size as :func:`top_fraction_mask` removes, made of smooth blobs.

    Random single pixels would be a much weaker perturbation than a CAM's contiguous top region
    (a blurred-in pixel is nearly its old value), so the baseline thresholds smooth noise instead:
    a ``grid x grid`` field upsampled to ``shape``, like a CAM from a last-stage feature map.
    """
    return top_fraction_mask(_smooth_noise(shape, rng, grid), pct)


def _smooth_noise(shape: tuple[int, int], rng: np.random.Generator, grid: int) -> np.ndarray:
    """A ``grid x grid`` uniform noise field upsampled (bilinear) to ``shape``: float ``(H, W)`` in [0, 1]."""
    noise = rng.random((grid, grid))
    field = ndimage.zoom(noise, (shape[0] / grid, shape[1] / grid), order=1)[: shape[0], : shape[1]]
    return np.pad(field, ((0, shape[0] - field.shape[0]), (0, shape[1] - field.shape[1])), mode="edge")


def _head_or_image(head: np.ndarray) -> np.ndarray:
    """The head mask, or the whole image when it is empty (a blank slice: no head to restrict to)."""
    return head if head.any() else np.ones(head.shape, dtype=bool)


def random_head_mask(head: np.ndarray, k: int, rng: np.random.Generator, grid: int = 8) -> np.ndarray:
    """Exactly ``k`` pixels of smooth random blobs inside the head ``(H, W)`` bool: the deletion test's
    random reference.

    Drawn over the whole image, half of a random region falls on the background, where blurring
    changes nothing, so any map that merely stays inside the head beats it. Here the smooth noise of
    :func:`random_blob_mask` is ranked over head pixels only. A head smaller than ``k`` pixels is
    taken whole, plus the ``k - |head|`` background pixels nearest to it; an empty head: the whole image.
    """
    head = _head_or_image(head)
    field = _smooth_noise(head.shape, rng, grid)
    # Head pixels rank by the noise (in [0, 1]) above every other pixel; the rest nearest to the head first.
    score = np.where(head, 2.0 + field, 1.0 - ndimage.distance_transform_edt(~head) / sum(head.shape))
    return _top_k(score, k)


def head_baseline_map(head: np.ndarray) -> np.ndarray:
    """The model-free reference map ``(H, W)`` float32 in [0, 1]: each head pixel's distance to the
    head's edge, normalised (0 outside the head; an empty head: distance to the image border).

    It knows where the head is and nothing about the model; its top ``k`` % is the head's central
    core, one contiguous region like a CAM's top. (A blurred head mask is flat inside the head and
    would leave its top ``k`` % to position ties; the distance ranks every head pixel.) A map that
    explains the model must cost it more confidence than this one."""
    dist = ndimage.distance_transform_edt(_head_or_image(head))
    return (dist / dist.max()).astype(np.float32)


def _top_k(score: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros(score.size, dtype=bool)
    if k > 0:
        out[np.argsort(-score.ravel(), kind="stable")[:k]] = True
    return out.reshape(score.shape)


def map_stats(
    cam: np.ndarray,
    *,
    threshold: float,
    brain: np.ndarray | None,
    lesion: np.ndarray | None,
    dilate_px: int = 3,
) -> dict[str, float | bool | None]:
    """Per-scan statistics of a normalised map ``(H, W)``; masks are bool ``(H, W)`` or None.

    ``pointing_chance`` is given exactly where ``pointing_hit`` is, so their means pair up."""
    hit = pointing_hit(cam, lesion, dilate_px)
    return {
        "intensity": intensity(cam),
        "area_pct": area_pct(cam, threshold),
        "threshold": float(threshold),
        "in_brain": energy_share(cam, brain),
        "head_area": None if brain is None else float(brain.mean()),  # what a map blind to anatomy scores in_brain
        "lesion_area": None if lesion is None else float(lesion.mean()),
        "pointing_hit": hit,
        "pointing_chance": None if hit is None else pointing_chance(brain, lesion, dilate_px),
        "lesion_energy": energy_share(cam, lesion),
    }
