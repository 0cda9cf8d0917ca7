"""Built-in realistic synthetic brain MRI: 2D T1-weighted axial slices with placed ground truth.

Every synthetic subject is the MNI152 2009a template (shipped inside nilearn, so it loads
offline) seen through a random smooth deformation, random tissue contrasts, a synthetic skull and
scalp, a multiplicative bias field and Rician noise. Pathology is painted at anatomically
plausible places and each slice's lesion mask is saved beside it (used later to check where
Grad-CAM looks). Contrast is T1-weighted, post-contrast-like for tumours (enhancing rim,
bright meningioma and pituitary mass); MS lesions are T1-*hypointense* ("black holes"), the
oedema around a glioma is hypointense too.

Geometry: all work happens on 1 mm axial slices of the template padded to a canvas of shape
``(H, W)`` (``_canvas_shape()``); rows run anterior -> posterior, columns patient right -> left
(radiological convention). Millimetre coordinates are MNI (x to the right, y anterior,
z superior); a slice's file index ``zzz`` is its index along the template's z axis.

Layout written by :func:`generate`::

    OUT/<task>/<class>/sub-<task>s<seed>c<class>n<NNNN>_slice-<zzz>.png   (size x size, mode L)
    OUT/<task>/<class>/sub-<task>s<seed>c<class>n<NNNN>_slice-<zzz>_mask.png   (0 / 255, empty when healthy)
    OUT/<task>/synth.json                                       (config + per-subject truth)
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import math
import re
import shutil
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from sslmri_core.config import TASKS, SynthConfig

__all__ = ["SynthSummary", "generate"]

FORMAT_VERSION = 1
PAD = 24  # canvas voxels added around the template: room for skull, scalp and deformation
MIN_SIZE = 16

# Slice ranges (MNI z, mm) chosen so each task's ground truth is in view: (preferred, widest).
# More slices per subject than the preferred range holds widen it, up to the widest.
ALZHEIMER_Z = ((0, 28), (-6, 38))  # lateral-ventricle bodies and frontal horns
PARKINSON_Z = ((-17, -5), (-19, -3))  # midbrain with the substantia nigra (z -20..-2)
MS_Z = (0, 30)  # lesion centres: periventricular white matter


# --------------------------------------------------------------------------------------------
# Template


@dataclass(frozen=True)
class _Atlas:
    """The template as loaded: RAS volumes ``(nx, ny, nz)`` float32 on a 1 mm grid."""

    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    brain: np.ndarray  # 0 / 1
    origin: tuple[float, float, float]  # MNI mm of voxel (0, 0, 0)

    @property
    def x_right(self) -> float:
        """MNI x (mm) of the first unpadded canvas column (patient right)."""
        return self.origin[0] + self.t1.shape[0] - 1

    @property
    def y_front(self) -> float:
        """MNI y (mm) of the first unpadded canvas row (anterior)."""
        return self.origin[1] + self.t1.shape[1] - 1

    @property
    def z0(self) -> float:
        return self.origin[2]


@functools.lru_cache(maxsize=1)
def _atlas() -> _Atlas:
    """Load nilearn's 1 mm MNI152 T1, GM, WM and brain mask once per process.

    They ship inside the nilearn package (no download); importing ``nilearn.datasets`` takes
    ~2 s, so it happens here, not at module import.
    """
    from nilearn import datasets

    imgs = [
        datasets.load_mni152_template(resolution=1),
        datasets.load_mni152_gm_template(resolution=1),
        datasets.load_mni152_wm_template(resolution=1),
        datasets.load_mni152_brain_mask(resolution=1),
    ]
    affine = imgs[0].affine
    if not np.allclose(affine[:3, :3], np.eye(3)):
        raise RuntimeError("expected a 1 mm axis-aligned RAS MNI152 template from nilearn")
    t1, gm, wm, brain = (img.get_fdata(dtype=np.float32) for img in imgs)
    origin = tuple(float(v) for v in affine[:3, 3])
    return _Atlas(t1=t1, gm=gm, wm=wm, brain=(brain > 0.5).astype(np.float32),
                  origin=origin)  # type: ignore[arg-type]


@functools.lru_cache(maxsize=1)
def _glioma_sites() -> np.ndarray:
    """Candidate glioma centres: deep hemispheric white matter (>= 14 mm inside the brain,
    |x| >= 14 mm, z in [-5, 40] mm) on a 2 mm grid, (n, 3) MNI mm."""
    atlas = _atlas()
    depth = ndimage.distance_transform_edt(atlas.brain[::2, ::2, ::2]) * 2.0
    voxels = np.argwhere((atlas.wm[::2, ::2, ::2] > 0.85) & (depth >= 14.0))
    sites = np.asarray(atlas.origin) + 2.0 * voxels
    keep = (np.abs(sites[:, 0]) >= 14.0) & (sites[:, 2] >= -5.0) & (sites[:, 2] <= 40.0)
    return sites[keep].astype(np.float32)


def _canvas_shape() -> tuple[int, int]:
    nx, ny, _ = _atlas().t1.shape
    return ny + 2 * PAD, nx + 2 * PAD


def _z_index(z_mm: float) -> int:
    return int(round(z_mm - _atlas().z0))


def _to_px(x_mm: float, y_mm: float) -> tuple[float, float]:
    """MNI (x, y) mm -> canvas (row, col)."""
    atlas = _atlas()
    return PAD + atlas.y_front - y_mm, PAD + atlas.x_right - x_mm


@functools.lru_cache(maxsize=1)
def _mm_grid() -> tuple[np.ndarray, np.ndarray]:
    """MNI x and y (mm) of every canvas pixel, each (H, W) float32."""
    atlas = _atlas()
    h, w = _canvas_shape()
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
    return atlas.x_right - (cols - PAD), atlas.y_front - (rows - PAD)


@dataclass(frozen=True)
class _Anatomy:
    """One template slice on the canvas; every array is (H, W) float32, distances in mm."""

    gm: np.ndarray
    wm: np.ndarray
    resid: np.ndarray  # template T1 minus its tissue-model prediction: deep-nuclei detail
    csf: np.ndarray  # 1 - gm - wm inside the (hole-filled) brain, 0 outside
    brain: np.ndarray  # 0 / 1, hole-filled (enclosed cisterns count as inside, as CSF)
    off_brain: np.ndarray  # distance outside the brain (0 inside)
    hull_dist: np.ndarray  # distance outside the brain's smoothed convex hull (0 inside)
    depth: np.ndarray  # distance inside the brain (0 outside)
    vent_dist: np.ndarray  # distance to ventricular CSF
    sulc_dist: np.ndarray  # distance to sulcal / cisternal CSF


def _convex_hull(mask: np.ndarray) -> np.ndarray:
    """Filled, slightly rounded convex hull of a 2D boolean mask, (H, W) bool."""
    from scipy.spatial import ConvexHull

    rows, cols = np.nonzero(mask)
    points = np.stack([cols, rows], axis=1).astype(np.float64)
    hull = ConvexHull(points)
    canvas = Image.new("L", (mask.shape[1], mask.shape[0]), 0)
    ImageDraw.Draw(canvas).polygon([tuple(points[v]) for v in hull.vertices], fill=255)
    return ndimage.gaussian_filter(np.asarray(canvas, np.float32), 10.0) > 115


def _pad(volume: np.ndarray, k: int) -> np.ndarray:
    """Axial slice ``k`` of an RAS volume on the canvas, (H, W) float32: anterior up, patient
    right on the left, padded by PAD."""
    return np.pad(volume[:, ::-1, k].T[:, ::-1], PAD)


@functools.lru_cache(maxsize=256)
def _brain(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Hole-filled brain mask (H, W) bool of slice ``k`` and the distance outside it (mm)."""
    inside = ndimage.binary_fill_holes(_pad(_atlas().brain, k) > 0.5)
    return inside, ndimage.distance_transform_edt(~inside).astype(np.float32)


@functools.lru_cache(maxsize=128)  # ~3 MB each; a full set touches ~90 slices
def _anatomy(k: int) -> _Anatomy:
    """Slice ``k`` of the template with the distance maps the lesion painters need."""
    atlas = _atlas()
    gm, wm, t1 = _pad(atlas.gm, k), _pad(atlas.wm, k), _pad(atlas.t1, k)
    inside, off_brain = _brain(k)
    # The skull follows the convex hull of the brain: on low slices it bridges the gaps between
    # temporal lobes, cerebellum and orbits, where the skull base would be.
    hull = _convex_hull(inside)
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0) * inside
    depth = ndimage.distance_transform_edt(inside)
    # Opening drops thin deep CSF (interhemispheric fissure), keeping the ventricles.
    vent = ndimage.binary_opening((csf > 0.5) & (depth > 9.0), np.ones((3, 3), bool))
    sulci = (csf > 0.35) & ~vent
    vent_dist = ndimage.distance_transform_edt(~vent) if vent.any() else np.full(gm.shape, 99.0)
    sulc_dist = ndimage.distance_transform_edt(~sulci) if sulci.any() else np.full(gm.shape, 99.0)
    t1_hat = 0.87 * wm + 0.65 * gm + 0.30 * csf  # template medians per tissue
    f32 = functools.partial(np.asarray, dtype=np.float32)
    return _Anatomy(
        gm=gm,
        wm=wm,
        resid=f32((t1 - t1_hat) * inside),
        csf=f32(csf),
        brain=f32(inside),
        off_brain=off_brain,
        hull_dist=f32(ndimage.distance_transform_edt(~hull)),
        depth=f32(depth),
        vent_dist=f32(vent_dist),
        sulc_dist=f32(sulc_dist),
    )


# --------------------------------------------------------------------------------------------
# Small numeric helpers


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) row-normalised Gaussian weights: smooth interpolation of n_in knots."""
    pos = np.linspace(0, n_in - 1, n_out)[:, None]
    weights = np.exp(-0.5 * ((pos - np.arange(n_in)[None, :]) / 0.6) ** 2)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def _upsample(coarse: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Smooth separable upsampling of a small (m, n) grid to ``shape``."""
    rows = _interp_matrix(shape[0], coarse.shape[0])
    cols = _interp_matrix(shape[1], coarse.shape[1])
    # Broadcast sums rather than BLAS matmul: bit-identical whatever the BLAS thread count.
    tmp = (rows[:, :, None] * coarse.astype(np.float32)[None]).sum(axis=1)  # (H, n)
    return (tmp[:, None, :] * cols[None]).sum(axis=2)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Zero-mean, unit-std smooth noise of ``shape`` with ~``cells`` blobs per side."""
    field_ = _upsample(rng.standard_normal((cells, cells)), shape)
    return (field_ - field_.mean()) / (field_.std() + 1e-6)


def _soft(rho: np.ndarray, edge: float) -> np.ndarray:
    """Soft inside-indicator of ``rho < 1`` with a linear edge ``edge`` wide (rho units)."""
    return np.clip((1.0 - rho) / edge + 0.5, 0.0, 1.0)


def _ramp(d: np.ndarray, width: float = 1.0) -> np.ndarray:
    """0 at ``d <= 0`` rising to 1 at ``d >= width`` (anti-aliased layer boundaries)."""
    return np.clip(d / width, 0.0, 1.0)


def _window(x: float, y: float, radius: float) -> tuple[slice, slice]:
    """Canvas window around MNI (x, y) mm covering ``radius`` mm, clipped to the canvas."""
    h, w = _canvas_shape()
    r, c = _to_px(x, y)
    r0, r1 = max(int(r - radius) - 2, 0), min(int(r + radius) + 3, h)
    c0, c1 = max(int(c - radius) - 2, 0), min(int(c + radius) + 3, w)
    return slice(r0, max(r0, r1)), slice(c0, max(c0, c1))


def _harmonics(rng: np.random.Generator, amplitude: float, kmax: int = 5) -> list[list[float]]:
    """Random boundary wobble: rows (k, amplitude, phase, z-twist) for k = 2..kmax."""
    return [
        [k, float(rng.uniform(0, amplitude) / math.sqrt(k - 1)), float(rng.uniform(0, 2 * math.pi)),
         float(rng.uniform(-1.5, 1.5))]
        for k in range(2, kmax + 1)
    ]


def _blob_rho(
    win: tuple[slice, slice], z: float, centre: tuple[float, float, float],
    radii: tuple[float, float, float], harmonics: list[list[float]],
) -> np.ndarray:
    """Normalised radius of an irregular ellipsoid on a canvas window (< 1 inside)."""
    gx, gy = _mm_grid()
    dx = (gx[win] - centre[0]) / radii[0]
    dy = (gy[win] - centre[1]) / radii[1]
    dz = (z - centre[2]) / radii[2]
    theta = np.arctan2(dy, dx)
    wobble = np.ones_like(dx)
    for k, amp, phase, twist in harmonics:
        wobble += amp * np.cos(k * theta + phase + twist * dz)
    return np.sqrt(dx * dx + dy * dy + dz * dz) / np.maximum(wobble, 0.3)


def _radial_push(
    x: float, y: float, amount: float, reach: float
) -> tuple[tuple[slice, slice], np.ndarray]:
    """Mass effect centred at MNI (x, y): source coordinates (2, h, w) for a window.

    Output radius r samples radius r * (1 - amount * exp(-(r/reach)^2)) (monotonic for
    amount < 1), so tissue moves away from the centre; a negative amount pulls it in.
    """
    win = _window(x, y, 2.5 * reach)
    r0, c0 = _to_px(x, y)
    rows, cols = np.mgrid[win[0], win[1]].astype(np.float32)
    dr, dc = rows - r0, cols - c0
    factor = 1.0 - amount * np.exp(-(dr * dr + dc * dc) / (reach * reach))
    return win, np.stack([r0 + dr * factor, c0 + dc * factor])


def _r(value: Any) -> Any:
    """Round floats (also inside lists) for stable, readable JSON."""
    if isinstance(value, (list, tuple)):
        return [_r(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return round(float(value), 3)
    if isinstance(value, np.integer):
        return int(value)
    return value


# --------------------------------------------------------------------------------------------
# Per-subject appearance


@dataclass
class _Look:
    """Per-subject tissue contrasts (T1: WM > GM > CSF) and head-layer thicknesses (mm)."""

    wm: float
    gm: float
    csf: float
    detail: float  # weight of the template's deep-nuclei detail
    bone: float
    diploe: float
    fat: float
    skin: float
    gap: float  # CSF between brain surface and inner skull table
    skull: float
    scalp: float
    head_wobble: list[list[float]]  # thickness variation around the head

    @staticmethod
    def sample(rng: np.random.Generator) -> _Look:
        return _Look(
            wm=rng.uniform(0.80, 0.92), gm=rng.uniform(0.50, 0.62), csf=rng.uniform(0.06, 0.15),
            detail=rng.uniform(0.4, 0.9), bone=rng.uniform(0.02, 0.08),
            diploe=rng.uniform(0.2, 0.4), fat=rng.uniform(0.75, 0.95),
            skin=rng.uniform(0.40, 0.55), gap=rng.uniform(1.0, 2.5), skull=rng.uniform(5.0, 8.0),
            scalp=rng.uniform(4.0, 7.0), head_wobble=_harmonics(rng, 0.25, 4),
        )


def _tissue(gm: np.ndarray, wm: np.ndarray, resid: np.ndarray, look: _Look) -> np.ndarray:
    """T1 intensity of brain and its CSF from tissue fractions, (H, W)."""
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0)
    return look.wm * wm + look.gm * gm + look.csf * csf + look.detail * resid


def _over(img: np.ndarray, value: Any, weight: np.ndarray) -> np.ndarray:
    """``img`` with ``value`` laid over it at opacity ``weight`` (all broadcastable)."""
    return img * (1 - weight) + value * weight


def _head(img: np.ndarray, anat: _Anatomy, look: _Look, texture: np.ndarray) -> np.ndarray:
    """Surround the brain (H, W) with CSF, skull and scalp; background is 0.

    Inner layers (CSF gap, inner table) follow the brain surface, outer ones (outer table,
    scalp fat, skin) the smoothed convex hull; in between lies marrow (diploe) - a thin band on
    high slices, the textured skull base on low ones.
    """
    gx, gy = _mm_grid()
    theta = np.arctan2(gy + 18.0, gx)  # angle about the head centre, ~(0, -18) mm
    wobble = np.ones_like(theta)
    for k, amp, phase, _ in look.head_wobble:
        wobble += amp * np.cos(k * theta + phase)
    table = 0.3 * look.skull * wobble
    outer = look.gap + look.skull * wobble  # outer skull surface, mm outside the hull
    marrow = np.clip(look.diploe + 0.2 * texture, 0.05, 0.7)
    db, dh = anat.off_brain, anat.hull_dist
    out = _over(img, look.csf, _ramp(db))
    out = _over(out, look.bone, _ramp(db - look.gap))
    out = _over(out, marrow, _ramp(db - look.gap - table))
    out = _over(out, look.bone, _ramp(dh - (outer - table)))
    out = _over(out, look.fat, _ramp(dh - outer))
    out = _over(out, look.skin, _ramp(dh - outer - look.scalp * wobble))
    return _over(out, 0.0, _ramp(dh - outer - look.scalp * wobble - 1.5))


# --------------------------------------------------------------------------------------------
# Lesions. Each paints onto a T1 canvas slice and returns its mask; ``push`` gives mass effect.


@dataclass
class _Lesion:
    """Base: no pathology (healthy slices use it too, with an empty mask)."""

    def push(self, z: float) -> tuple[tuple[slice, slice], np.ndarray] | None:
        """Mass effect / atrophy warp of the brain at MNI z: (window, source coords)."""
        return None

    def paint(self, img: np.ndarray, anat: _Anatomy, z: float, look: _Look,
              texture: np.ndarray, tissue: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """Paint in place onto ``img`` (H, W); ``tissue`` is (gm, wm) after ``push``.
        Returns the lesion mask (H, W) bool."""
        return np.zeros(img.shape, dtype=bool)

    def info(self) -> dict[str, Any]:
        return {}


def _blend(img: np.ndarray, win: tuple[slice, slice], alpha: np.ndarray, value: Any) -> None:
    """In place: lay ``value`` over the window ``win`` of ``img`` at opacity ``alpha``."""
    img[win] = _over(img[win], value, alpha)


@dataclass
class _Tumour(_Lesion):
    """A mass: ellipsoid of in-plane ``radius`` and ``z_radius`` (mm) about ``centre`` (MNI)."""

    centre: tuple[float, float, float]
    radius: float
    z_radius: float

    def _section(self, z: float) -> float:
        """In-plane radius scale of the mass at MNI z (0 outside it)."""
        t = (z - self.centre[2]) / self.z_radius
        return math.sqrt(max(0.0, 1.0 - t * t))

    def area(self, z: float, look: _Look) -> float:
        """Approximate mask area at MNI z (mm^2), for choosing slices that show the tumour."""
        return math.pi * (self.radius * self._section(z)) ** 2

    def info(self):
        return {k: _r(v) for k, v in asdict(self).items() if not k.endswith("shape")}


@dataclass
class _Glioma(_Tumour):
    """Irregular intra-axial mass in hemispheric white matter: necrotic core, enhancing rim,
    surrounding white-matter oedema, mass effect."""

    core: float  # necrotic core / mass radius
    oedema: float  # oedema / mass radius
    push_amount: float
    shape: list[list[float]]
    oedema_shape: list[list[float]]
    rim_gain: float
    core_level: float
    oedema_level: float
    kind: str = "glioma"

    @staticmethod
    def sample(rng: np.random.Generator) -> _Glioma:
        sites = _glioma_sites()
        x, y, z = (float(v) for v in sites[rng.integers(len(sites))])
        r = rng.uniform(12.0, 22.0)
        return _Glioma(
            centre=(x, y, z), radius=r, z_radius=r * rng.uniform(0.75, 1.0),
            core=rng.uniform(0.35, 0.6), oedema=rng.uniform(1.6, 2.2),
            push_amount=rng.uniform(0.25, 0.45), shape=_harmonics(rng, 0.14),
            oedema_shape=_harmonics(rng, 0.3), rim_gain=rng.uniform(1.08, 1.25),
            core_level=rng.uniform(0.08, 0.2), oedema_level=rng.uniform(0.45, 0.58),
        )

    def push(self, z):
        s = self._section(z)
        if s < 0.2:
            return None
        return _radial_push(self.centre[0], self.centre[1], self.push_amount, self.radius * s * 1.3)

    def paint(self, img, anat, z, look, texture, tissue):
        mask = np.zeros(img.shape, dtype=bool)
        if abs(z - self.centre[2]) > self.z_radius * self.oedema:
            return mask
        win = _window(self.centre[0], self.centre[1], self.radius * self.oedema * 1.4)
        gm, wm = tissue
        radii = (self.radius, self.radius, self.z_radius)
        rho = _blob_rho(win, z, self.centre, radii, self.shape)
        rho_e = _blob_rho(win, z, self.centre, tuple(r * self.oedema for r in radii),
                          self.oedema_shape)
        # Vasogenic oedema spreads along white matter, hardly into cortex.
        a_oed = _soft(rho_e, 0.15) * np.clip(wm[win] + 0.25 * gm[win], 0, 1)
        a_mass = _soft(rho, 1.5 / self.radius)
        rim = look.wm * self.rim_gain * (1 + 0.08 * texture[win])
        core = look.csf + self.core_level
        value = rim + (core - rim) * _soft(rho / self.core, 2.0 / (self.radius * self.core))
        _blend(img, win, a_oed, self.oedema_level * look.wm)
        _blend(img, win, a_mass, value)
        mask[win] = (a_mass > 0.5) | (a_oed > 0.5)
        return mask


@dataclass
class _Meningioma(_Tumour):
    """Homogeneous bright extra-axial convexity mass: broad dural base on the inner skull table,
    indenting the cortex."""

    push_amount: float
    level: float
    kind: str = "meningioma"

    @staticmethod
    def sample(rng: np.random.Generator) -> _Meningioma:
        z = float(rng.integers(10, 46))
        angle = rng.uniform(0, 2 * math.pi)
        sx, sy = _brain_surface(_z_index(z), angle)
        r = rng.uniform(13.0, 22.0)
        # Centre near the brain surface; the skull clips the outer part, the push makes room.
        out = r * rng.uniform(-0.35, 0.05)
        cx, cy = sx + out * math.cos(angle), sy + out * math.sin(angle)
        return _Meningioma(centre=(cx, cy, z), radius=r, z_radius=r * rng.uniform(0.8, 1.0),
                           push_amount=rng.uniform(0.45, 0.65), level=rng.uniform(1.05, 1.2))

    def push(self, z):
        s = self._section(z)
        if s < 0.2:
            return None
        return _radial_push(self.centre[0], self.centre[1], self.push_amount, self.radius * s)

    def _alpha(self, z: float, off_brain: np.ndarray,
               gap: float) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
        """Window, soft occupancy of the mass and of the CSF cleft around it (the extra-axial
        sign), both clipped at the inner skull table: the flat side is the dural base."""
        win = _window(self.centre[0], self.centre[1], self.radius * 1.3)
        rho = _blob_rho(win, z, self.centre, (self.radius, self.radius, self.z_radius), [])
        inside_skull = 1 - _ramp(off_brain[win] - gap - 0.5)
        mass = _soft(rho, 1.5 / self.radius) * inside_skull
        cleft = np.clip(_soft(rho / 1.12, 1.5 / self.radius) * inside_skull - mass, 0, 1)
        return win, mass, cleft

    def area(self, z, look):
        # The skull clips the mass and moves with z: measure instead of estimating.
        if self._section(z) == 0.0:
            return 0.0
        _, mass, _ = self._alpha(z, _brain(_z_index(z))[1], look.gap)
        return float((mass > 0.5).sum())

    def paint(self, img, anat, z, look, texture, tissue):
        mask = np.zeros(img.shape, dtype=bool)
        if self._section(z) == 0.0:
            return mask
        win, mass, cleft = self._alpha(z, anat.off_brain, look.gap)
        _blend(img, win, 0.7 * cleft, look.csf)
        _blend(img, win, mass, look.wm * self.level * (1 + 0.04 * texture[win]))
        mask[win] = mass > 0.5
        return mask


def _brain_surface(k: int, angle: float) -> tuple[float, float]:
    """Where a ray from the slice's brain centroid at ``angle`` (MNI x-y plane) leaves the brain."""
    inside = _brain(k)[0]
    gx, gy = _mm_grid()
    cx, cy = float(gx[inside].mean()), float(gy[inside].mean())
    last = (cx, cy)
    for step in np.arange(0.0, 120.0, 0.5):
        x, y = cx + step * math.cos(angle), cy + step * math.sin(angle)
        r, c = (int(round(v)) for v in _to_px(x, y))
        if not (0 <= r < inside.shape[0] and 0 <= c < inside.shape[1]):
            break
        if inside[r, c]:
            last = (x, y)
    return last


@dataclass
class _Pituitary(_Tumour):
    """Bright round macroadenoma in the midline at the sella, extending upwards."""

    level: float
    kind: str = "pituitary"

    @staticmethod
    def sample(rng: np.random.Generator) -> _Pituitary:
        r = rng.uniform(6.0, 10.0)
        centre = (rng.uniform(-2, 2), rng.uniform(0, 6), rng.uniform(-32, -24))
        return _Pituitary(centre=centre, radius=r, z_radius=r * rng.uniform(1.0, 1.4),
                          level=rng.uniform(0.95, 1.15))

    def push(self, z):
        s = self._section(z)
        if s < 0.45:
            return None
        return _radial_push(self.centre[0], self.centre[1], 0.2, self.radius * s * 1.2)

    def paint(self, img, anat, z, look, texture, tissue):
        mask = np.zeros(img.shape, dtype=bool)
        win = _window(self.centre[0], self.centre[1], self.radius * 1.2)
        rho = _blob_rho(win, z, self.centre, (self.radius, self.radius * 0.9, self.z_radius), [])
        alpha = _soft(rho, 1.2 / self.radius)
        _blend(img, win, alpha, look.wm * self.level * (1 + 0.05 * texture[win]))
        mask[win] = alpha > 0.5
        return mask


@dataclass
class _Atrophy(_Lesion):
    """Alzheimer's grade g (0-3): ventricles widen ~1.5 g mm, sulci / cortex ~0.6 g mm."""

    grade: int
    severity: float
    ventricle_mm: float = 0.0
    sulcus_mm: float = 0.0
    kind: str = "atrophy"

    def __post_init__(self) -> None:
        self.ventricle_mm = 1.5 * self.grade * self.severity
        self.sulcus_mm = 0.6 * self.grade * self.severity

    def paint(self, img, anat, z, look, texture, tissue):
        if self.grade == 0:
            return np.zeros(img.shape, dtype=bool)
        # Irregular widening: the distance threshold wobbles with the subject's texture.
        vent = _ramp(self.ventricle_mm - (anat.vent_dist + 0.7 * texture), 1.5)
        sulc = _ramp(self.sulcus_mm - (anat.sulc_dist + 0.3 * texture), 1.0) * (anat.depth < 20)
        alpha = np.maximum(vent, sulc) * anat.brain * (1 - anat.csf)
        full = (slice(None), slice(None))
        _blend(img, full, alpha, look.csf)
        return alpha > 0.3

    def info(self):
        return {k: _r(v) for k, v in asdict(self).items()}


@dataclass
class _Nigral(_Lesion):
    """Substantia nigra at the midbrain. Normal: slightly dark band with a bright nigrosome-1
    dot ("swallow tail"). Parkinson's: dot lost, band darker, midbrain slightly narrowed;
    the mask (Parkinson's only) is both nigrae."""

    parkinson: bool
    offset: tuple[float, float]  # per-subject jitter of the nigrae (mm)
    band_dark: float
    dot_bright: float
    narrowing: float
    kind: str = "substantia_nigra"

    @staticmethod
    def sample(rng: np.random.Generator, parkinson: bool) -> _Nigral:
        return _Nigral(
            parkinson=parkinson, offset=(rng.uniform(-1, 1), rng.uniform(-1, 1)),
            band_dark=rng.uniform(0.15, 0.25) if parkinson else rng.uniform(0.0, 0.05),
            dot_bright=rng.uniform(0.0, 0.03) if parkinson else rng.uniform(0.2, 0.3),
            narrowing=rng.uniform(0.06, 0.1) if parkinson else 0.0,
        )

    def push(self, z):
        if self.narrowing == 0.0:
            return None
        return _radial_push(0.0, -24.0 + self.offset[1], -self.narrowing, 16.0)

    def _ellipses(self, z: float) -> list[tuple[tuple[slice, slice], np.ndarray, np.ndarray]]:
        """Per side: (window, band rho, dot rho) of the nigra at MNI z."""
        gx, gy = _mm_grid()
        out = []
        for side in (-1.0, 1.0):
            cx, cy = side * (9.5 + self.offset[0]), -20.0 + self.offset[1]
            win = _window(cx, cy, 9.0)
            dx, dy = gx[win] - cx, gy[win] - cy
            # Long axis from anteromedial to posterolateral (~50 deg from the x axis).
            ux, uy = side * math.cos(math.radians(50)), -math.sin(math.radians(50))
            along, across = dx * ux + dy * uy, -dx * uy + dy * ux
            tz = ((z + 11.0) / 9.0) ** 2
            band = np.sqrt((along / 6.0) ** 2 + (across / 2.2) ** 2 + tz)
            dot = np.sqrt(((along - 2.5) / 2.5) ** 2 + (across / 2.0) ** 2 + tz)
            out.append((win, band, dot))
        return out

    def paint(self, img, anat, z, look, texture, tissue):
        mask = np.zeros(img.shape, dtype=bool)
        for win, band, dot in self._ellipses(z):
            a_band, a_dot = _soft(band, 0.3), _soft(dot, 0.4)
            img[win] += look.wm * (self.dot_bright * a_dot - self.band_dark * a_band)
            if self.parkinson:
                mask[win] |= a_band > 0.5
        return mask

    def info(self):
        return {k: _r(v) for k, v in asdict(self).items()}


@dataclass
class _MSLesions(_Lesion):
    """3-10 small ovoid periventricular white-matter lesions, long axis pointing away from the
    ventricles (Dawson's fingers); T1-hypointense."""

    lesions: list[dict[str, Any]] = field(default_factory=list)
    kind: str = "ms"

    @staticmethod
    def sample_one(rng: np.random.Generator) -> dict[str, Any]:
        """One lesion: centre (mm), half-axes along / across the radial direction and in z."""
        while True:
            z = float(rng.integers(MS_Z[0], MS_Z[1] + 1))
            anat = _anatomy(_z_index(z))
            rows, cols = np.nonzero((anat.wm > 0.7) & (anat.vent_dist >= 2.5)
                                    & (anat.vent_dist <= 9.0) & (anat.depth > 8.0))
            if len(rows):
                break
        i = rng.integers(len(rows))
        r, c = int(rows[i]), int(cols[i])
        gx, gy = _mm_grid()
        d = anat.vent_dist  # central differences: the direction away from the ventricle
        g_row, g_col = d[r + 1, c] - d[r - 1, c], d[r, c + 1] - d[r, c - 1]
        # Canvas rows run to -y, columns to -x: the outward direction in MNI mm.
        angle = math.atan2(-g_row, -g_col)
        return {
            "centre": [float(gx[r, c]), float(gy[r, c]), z],
            "angle": angle, "long": rng.uniform(4.5, 8.5), "short": rng.uniform(2.8, 4.2),
            "z_half": rng.uniform(3.5, 6.0), "level": rng.uniform(0.25, 0.40),
        }

    @staticmethod
    def visible_z(lesion: dict[str, Any]) -> range:
        """Integer z (mm) where the lesion's cross-section is clearly non-empty."""
        zc, half = lesion["centre"][2], 0.6 * lesion["z_half"]
        return range(math.ceil(zc - half), math.floor(zc + half) + 1)

    def paint(self, img, anat, z, look, texture, tissue):
        mask = np.zeros(img.shape, dtype=bool)
        gx, gy = _mm_grid()
        gm, wm = tissue
        for les in self.lesions:
            cx, cy, cz = les["centre"]
            tz = ((z - cz) / les["z_half"]) ** 2
            if tz >= 1.0:
                continue
            win = _window(cx, cy, les["long"] + 1)
            dx, dy = gx[win] - cx, gy[win] - cy
            ux, uy = math.cos(les["angle"]), math.sin(les["angle"])
            along, across = dx * ux + dy * uy, -dx * uy + dy * ux
            rho = np.sqrt((along / les["long"]) ** 2 + (across / les["short"]) ** 2 + tz)
            alpha = _soft(rho, 0.25) * np.clip(wm[win] + gm[win], 0, 1)
            _blend(img, win, alpha, les["level"] * look.wm)
            mask[win] |= alpha > 0.5
        return mask

    def info(self):
        return {"kind": self.kind, "count": len(self.lesions), "lesions": _r_dicts(self.lesions)}


def _r_dicts(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: _r(v) for k, v in item.items()} for item in items]


# --------------------------------------------------------------------------------------------
# Subjects: lesion + slice choice per class


def _spread(rng: np.random.Generator, candidates: list[int], k: int) -> list[int]:
    """``k`` distinct values spread over sorted ``candidates`` (one random pick per chunk)."""
    cands = sorted(set(candidates))
    if len(cands) <= k:
        return cands
    return [int(rng.choice(chunk)) for chunk in np.array_split(np.array(cands), k)]


def _z_range(ranges: tuple[tuple[int, int], tuple[int, int]], k: int) -> list[int]:
    """Integer z in the preferred range, widened towards the widest until it holds ``k``
    values (fewer when even the widest range is too short)."""
    (lo, hi), (lo_max, hi_max) = ranges
    while hi - lo + 1 < k and (lo > lo_max or hi < hi_max):
        lo, hi = max(lo - 1, lo_max), min(hi + 1, hi_max)
    return list(range(lo, hi + 1))


_TUMOURS: dict[str, Callable[[np.random.Generator], _Tumour]] = {
    "glioma": _Glioma.sample,
    "meningioma": _Meningioma.sample,
    "pituitary": _Pituitary.sample,
}


def _tumour_slices(rng: np.random.Generator, tumour: _Tumour, look: _Look, k: int) -> list[int]:
    """Slices (z mm) clearly through the tumour: its mask covers >= 1/4 of its largest
    cross-section and >= 20 mm^2."""
    zc, zr = tumour.centre[2], tumour.z_radius
    area = {z: tumour.area(z, look) for z in range(math.ceil(zc - zr), math.floor(zc + zr) + 1)}
    least = max(20.0, max(area.values()) / 4)
    return _spread(rng, [z for z, a in area.items() if a >= least], k)


def _ms_subject(rng: np.random.Generator, k: int) -> tuple[_MSLesions, list[int]]:
    """3-10 lesions (more only if ``k`` slices need them); slices each cut >= 1 lesion."""
    lesions = [_MSLesions.sample_one(rng) for _ in range(int(rng.integers(3, 11)))]
    visible = {z for les in lesions for z in _MSLesions.visible_z(les)}
    while len(visible) < k:
        lesions.append(_MSLesions.sample_one(rng))
        visible |= set(_MSLesions.visible_z(lesions[-1]))
    return _MSLesions(lesions=lesions), _spread(rng, sorted(visible), k)


def _pathology(rng: np.random.Generator, task: str, cls: str, look: _Look,
               k: int) -> tuple[_Lesion, list[int]]:
    """The subject's lesion (a plain ``_Lesion`` when healthy) and its slice z (mm)."""
    classes = TASKS[task]
    if task == "tumor":
        if cls in _TUMOURS:
            lesion = _TUMOURS[cls](rng)
            return lesion, _tumour_slices(rng, lesion, look, k)
        # Healthy: slices of a phantom tumour, so slice level is no giveaway.
        phantom = _TUMOURS[sorted(_TUMOURS)[int(rng.integers(len(_TUMOURS)))]](rng)
        return _Lesion(), _tumour_slices(rng, phantom, look, k)
    if task == "alzheimer":
        lesion = _Atrophy(grade=classes.index(cls), severity=float(rng.uniform(0.8, 1.2)))
        return lesion, _spread(rng, _z_range(ALZHEIMER_Z, k), k)
    if task == "parkinsons":
        lesion = _Nigral.sample(rng, parkinson=cls == classes[-1])
        return lesion, _spread(rng, _z_range(PARKINSON_Z, k), k)
    if task == "ms":
        ms, slices = _ms_subject(rng, k)
        return (ms if cls == "lesion" else _Lesion()), slices
    raise ValueError(f"unknown task {task!r}")


@dataclass
class _Subject:
    id: str
    cls: str
    lesion: _Lesion
    slices: list[int]  # MNI z (mm)
    look: _Look
    coords: np.ndarray  # (2, H, W) float32: source canvas (row, col) of each warped pixel
    texture: np.ndarray  # (H, W) smooth unit noise
    margin: float
    offset: tuple[float, float]
    deformation: dict[str, float]
    rng: np.random.Generator  # continues into per-slice bias field and noise


def _deformation(rng: np.random.Generator) -> tuple[np.ndarray, dict[str, float]]:
    """Random rotation and (slightly anisotropic) scale plus a smooth displacement field of a
    few mm, as source coordinates (2, H, W) for ``ndimage.map_coordinates``. No shift: the
    head is re-centred by the crop anyway."""
    h, w = _canvas_shape()
    rot = math.radians(rng.uniform(-10, 10))
    scale = rng.uniform(0.92, 1.08) * np.array([rng.uniform(0.97, 1.03), 1.0])
    amp = rng.uniform(1.5, 3.5)
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
    cr, cc = (h - 1) / 2, (w - 1) / 2
    dr, dc = rows - cr, cols - cc
    cos, sin = math.cos(rot), math.sin(rot)
    src_r = cr + (cos * dr - sin * dc) / scale[0]
    src_c = cc + (sin * dr + cos * dc) / scale[1]
    src_r += amp * _smooth_noise(rng, (h, w), 5)
    src_c += amp * _smooth_noise(rng, (h, w), 5)
    info = {"rotation_deg": math.degrees(rot), "scale_row": float(scale[0]),
            "scale_col": float(scale[1]), "displacement_mm": amp}
    return np.stack([src_r, src_c]).astype(np.float32), info


def _seed(seed: int, task: str, cls: str, index: int) -> list[int]:
    """Per-subject seed: independent of generation order and of the other classes."""
    return [seed % 2**64, zlib.crc32(task.encode()), zlib.crc32(cls.encode()), index]


def _make_subject(task: str, cls: str, index: int, sid: str, config: SynthConfig) -> _Subject:
    rng = np.random.default_rng(_seed(config.seed, task, cls, index))
    look = _Look.sample(rng)
    lesion, slices = _pathology(rng, task, cls, look, config.slices_per_subject)
    coords, deformation = _deformation(rng)
    return _Subject(
        id=sid, cls=cls, lesion=lesion, slices=slices, look=look, coords=coords,
        texture=_smooth_noise(rng, _canvas_shape(), 12), margin=float(rng.uniform(0.03, 0.10)),
        offset=(float(rng.uniform(-0.5, 0.5)), float(rng.uniform(-0.5, 0.5))),
        deformation=deformation, rng=rng,
    )


# --------------------------------------------------------------------------------------------
# Rendering


def _render(subject: _Subject, z: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One slice: (size, size) uint8 image and (size, size) uint8 mask (0 / 255)."""
    anat = _anatomy(_z_index(z))
    gm, wm, resid = anat.gm, anat.wm, anat.resid
    pushed = subject.lesion.push(z)
    if pushed is not None:  # mass effect / atrophy moves brain tissue, not the skull
        win, src = pushed
        gm, wm, resid = (a.copy() for a in (gm, wm, resid))
        for moved, orig in ((gm, anat.gm), (wm, anat.wm), (resid, anat.resid)):
            moved[win] = ndimage.map_coordinates(orig, src, order=1, mode="nearest")
    img = _head(_tissue(gm, wm, resid, subject.look), anat, subject.look, subject.texture)
    mask = subject.lesion.paint(img, anat, z, subject.look, subject.texture, (gm, wm))
    img = ndimage.map_coordinates(img, subject.coords, order=1, mode="constant", cval=0.0)
    mask_f = (ndimage.map_coordinates(mask.astype(np.float32), subject.coords, order=1,
                                      mode="constant", cval=0.0)
              if mask.any() else np.zeros_like(img))
    img, mask_f = _crop_resize(img, mask_f, subject, size)
    return _finish(img, subject, size), _binarise(mask_f, mask.any())


def _crop_resize(img: np.ndarray, mask: np.ndarray, subject: _Subject,
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


def _finish(img: np.ndarray, subject: _Subject, size: int) -> np.ndarray:
    """Bias field, Rician noise, per-image normalisation: (size, size) float -> uint8."""
    rng = subject.rng
    img = img * np.exp(rng.uniform(0.04, 0.1) * _smooth_noise(rng, (size, size), 3))
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


# --------------------------------------------------------------------------------------------
# Public API


@dataclass
class SynthSummary:
    out: Path
    tasks: dict[str, dict[str, int]]  # task -> class -> number of image files written
    subjects: int  # total synthetic subjects written
    images: int  # total image PNGs written (masks not counted)
    seconds: float


def _tasks(task: str) -> list[str]:
    if task == "all":
        return list(TASKS)
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(TASKS)} or 'all'")
    return [task]


def _validate(config: SynthConfig) -> None:
    if config.subjects < 1 or config.slices_per_subject < 1:
        raise ValueError("subjects and slices_per_subject must be >= 1")
    if config.size < MIN_SIZE:
        raise ValueError(f"size must be >= {MIN_SIZE} px")


def _version() -> str:
    try:
        return importlib.metadata.version("sslmri")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _write_subject(subject: _Subject, folder: Path, size: int) -> list[str]:
    """Render and save every slice of a subject; returns the image file names."""
    names = []
    for z in subject.slices:
        img, mask = _render(subject, z, size)
        stem = f"{subject.id}_slice-{_z_index(z):03d}"
        Image.fromarray(img).save(folder / f"{stem}.png")
        Image.fromarray(mask).save(folder / f"{stem}_mask.png")
        names.append(f"{stem}.png")
    return names


def generate(out: Path, config: SynthConfig,
             progress: Callable[[int, int], None] | None = None) -> SynthSummary:
    """Write the set; progress(done, total) is called after each subject."""
    start = time.perf_counter()
    _validate(config)
    out = Path(out)
    tasks = _tasks(config.task)
    total = sum(len(TASKS[t]) for t in tasks) * config.subjects
    counts: dict[str, dict[str, int]] = {}
    done = images = 0
    for task in tasks:
        task_dir = out / task
        if task_dir.exists():
            shutil.rmtree(task_dir)
        label = re.sub(r"[^A-Za-z0-9]", "", task)
        records = []
        counts[task] = {}
        for ci, cls in enumerate(TASKS[task]):
            folder = task_dir / cls
            folder.mkdir(parents=True)
            counts[task][cls] = 0
            for i in range(config.subjects):
                # what makes a subject (seed, class, index) is in its id: two sets never share an id by accident
                sid = f"sub-{label}s{config.seed}c{ci}n{i + 1:04d}"
                subject = _make_subject(task, cls, i, sid, config)
                files = _write_subject(subject, folder, config.size)
                counts[task][cls] += len(files)
                images += len(files)
                records.append(_record(subject, ci, files))
                done += 1
                if progress is not None:
                    progress(done, total)
        _write_meta(task_dir, task, config, records)
    return SynthSummary(out=out, tasks=counts, subjects=done, images=images,
                        seconds=time.perf_counter() - start)


def _record(subject: _Subject, label: int, files: list[str]) -> dict[str, Any]:
    return {
        "subject": subject.id,
        "class": subject.cls,
        "label": label,
        "slices": [_z_index(z) for z in subject.slices],
        "slices_mni_z_mm": subject.slices,
        "files": files,
        "lesion": subject.lesion.info(),
        "deformation": {k: _r(v) for k, v in subject.deformation.items()},
    }


def _write_meta(task_dir: Path, task: str, config: SynthConfig,
                records: list[dict[str, Any]]) -> None:
    meta = {
        "generator": "sslmri_core.data.synth",
        "sslmri_version": _version(),
        "format_version": FORMAT_VERSION,
        "task": task,
        "classes": TASKS[task],
        "config": asdict(config),
        "template": "MNI152 ICBM 2009a sym, 1 mm (nilearn)",
        "orientation": "axial; anterior up; patient right on image left (radiological)",
        "contrast": "T1-weighted; tumours post-contrast-like; MS lesions hypointense",
        "subjects": records,
    }
    (task_dir / "synth.json").write_text(json.dumps(meta, indent=1) + "\n")
