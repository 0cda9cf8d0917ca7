"""The MNI152 template on the drawing canvas: loading, geometry and per-slice anatomy.

All work happens on 1 mm axial slices of the template padded by ``PAD`` to a canvas of shape
``(H, W)`` (:func:`canvas_shape`); rows run anterior -> posterior, columns patient right -> left
(radiological convention). Millimetre coordinates are MNI (x to the right, y anterior,
z superior); :func:`z_index` turns an MNI z into the template's slice index.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

PAD = 24  # canvas voxels added around the template: room for skull, scalp and deformation


@dataclass(frozen=True)
class Atlas:
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
def load_atlas() -> Atlas:
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
    return Atlas(t1=t1, gm=gm, wm=wm, brain=(brain > 0.5).astype(np.float32),
                 origin=origin)  # type: ignore[arg-type]


def canvas_shape() -> tuple[int, int]:
    nx, ny, _ = load_atlas().t1.shape
    return ny + 2 * PAD, nx + 2 * PAD


def z_index(z_mm: float) -> int:
    return round(z_mm - load_atlas().z0)


def to_px(x_mm: float, y_mm: float) -> tuple[float, float]:
    """MNI (x, y) mm -> canvas (row, col)."""
    atlas = load_atlas()
    return PAD + atlas.y_front - y_mm, PAD + atlas.x_right - x_mm


@functools.lru_cache(maxsize=1)
def mm_grid() -> tuple[np.ndarray, np.ndarray]:
    """MNI x and y (mm) of every canvas pixel, each (H, W) float32."""
    atlas = load_atlas()
    h, w = canvas_shape()
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
    return atlas.x_right - (cols - PAD), atlas.y_front - (rows - PAD)


@dataclass(frozen=True)
class Anatomy:
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
def brain_mask(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Hole-filled brain mask (H, W) bool of slice ``k`` and the distance outside it (mm)."""
    inside = ndimage.binary_fill_holes(_pad(load_atlas().brain, k) > 0.5)
    return inside, ndimage.distance_transform_edt(~inside).astype(np.float32)


@functools.lru_cache(maxsize=128)  # ~3 MB each; a full set touches ~90 slices
def anatomy(k: int) -> Anatomy:
    """Slice ``k`` of the template with the distance maps the lesion painters need."""
    atlas = load_atlas()
    gm, wm, t1 = _pad(atlas.gm, k), _pad(atlas.wm, k), _pad(atlas.t1, k)
    inside, off_brain = brain_mask(k)
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
    return Anatomy(
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
