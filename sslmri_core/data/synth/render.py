"""Rendering one slice of a subject: anatomy, head and lesion on the canvas, deformation, crop
to the head, bias field, Rician noise and 8-bit normalisation."""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage

from .phantom import draw_head, tissue_t1
from .primitives import smooth_noise
from .subject import Subject
from .template import anatomy, z_index


def render_slice(subject: Subject, z: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One slice: (size, size) uint8 image and (size, size) uint8 mask (0 / 255)."""
    anat = anatomy(z_index(z))
    gm, wm, resid = anat.gm, anat.wm, anat.resid
    pushed = subject.lesion.push(z)
    if pushed is not None:  # mass effect / atrophy moves brain tissue, not the skull
        win, src = pushed
        gm, wm, resid = (a.copy() for a in (gm, wm, resid))
        for moved, orig in ((gm, anat.gm), (wm, anat.wm), (resid, anat.resid)):
            moved[win] = ndimage.map_coordinates(orig, src, order=1, mode="nearest")
    img = draw_head(tissue_t1(gm, wm, resid, subject.look), anat, subject.look, subject.texture)
    mask = subject.lesion.paint(img, anat, z, subject.look, subject.texture, (gm, wm))
    img = ndimage.map_coordinates(img, subject.coords, order=1, mode="constant", cval=0.0)
    mask_f = (ndimage.map_coordinates(mask.astype(np.float32), subject.coords, order=1,
                                      mode="constant", cval=0.0)
              if mask.any() else np.zeros_like(img))
    img, mask_f = _crop_resize(img, mask_f, subject, size)
    return _finish(img, subject, size), _binarise(mask_f, bool(mask.any()))


def _crop_resize(img: np.ndarray, mask: np.ndarray, subject: Subject,
                 size: int) -> tuple[np.ndarray, np.ndarray]:
    """Crop (H, W) canvases to the head's bounding box padded to a square, resample to
    (size, size) with an anti-alias blur when shrinking."""
    rows, cols = np.nonzero(img > 0.05)
    r0, r1, c0, c1 = rows.min(), rows.max(), cols.min(), cols.max()
    side = max(r1 - r0, c1 - c0) * (1 + 2 * subject.margin)
    cr = (r0 + r1) / 2 + subject.offset[0] * subject.margin * side
    cc = (c0 + c1) / 2 + subject.offset[1] * subject.margin * side
    step = side / size
    if step > 1.0:
        sigma = 0.45 * step
        img, mask = ndimage.gaussian_filter(img, sigma), ndimage.gaussian_filter(mask, sigma)
    grid = (np.arange(size, dtype=np.float32) + 0.5) * step - side / 2
    rr, cc_ = np.meshgrid(cr + grid, cc + grid, indexing="ij")
    sample = functools.partial(ndimage.map_coordinates, coordinates=[rr, cc_], order=1,
                               mode="constant", cval=0.0)
    return sample(img), sample(mask)


def _finish(img: np.ndarray, subject: Subject, size: int) -> np.ndarray:
    """Bias field, Rician noise, per-image normalisation: (size, size) float -> uint8."""
    rng = subject.rng
    img = img * np.exp(rng.uniform(0.04, 0.1) * smooth_noise(rng, (size, size), 3))
    sigma = rng.uniform(0.01, 0.03) * subject.look.wm
    noisy = np.hypot(img + sigma * rng.standard_normal(img.shape),
                     sigma * rng.standard_normal(img.shape))
    ref = np.percentile(noisy[noisy > 0.1 * noisy.max()], 99.7)
    return np.clip(np.round(noisy / ref * 240.0), 0, 255).astype(np.uint8)


def _binarise(mask: np.ndarray, had_lesion: bool) -> np.ndarray:
    """Resampled mask -> 0 / 255; a lesion present on the canvas never vanishes."""
    out = mask > 0.35
    if had_lesion and not out.any():
        out.flat[int(np.argmax(mask))] = True
    return (out * 255).astype(np.uint8)
