"""Synthetic subjects: a per-subject random stream drawing the look, the class's lesion and
slices, and a smooth deformation of the template."""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np

from sslmri_core.config import TASKS, SynthConfig

from .alzheimer import ALZHEIMER_Z, Atrophy
from .lesion import Lesion, spread
from .ms import ms_subject
from .parkinsons import PARKINSON_Z, Nigral
from .phantom import Look
from .primitives import smooth_noise
from .template import canvas_shape
from .tumour import TUMOURS, tumour_slices


def _z_range(ranges: tuple[tuple[int, int], tuple[int, int]], k: int) -> list[int]:
    """Integer z in the preferred range, widened towards the widest until it holds ``k``
    values (fewer when even the widest range is too short)."""
    (lo, hi), (lo_max, hi_max) = ranges
    while hi - lo + 1 < k and (lo > lo_max or hi < hi_max):
        lo, hi = max(lo - 1, lo_max), min(hi + 1, hi_max)
    return list(range(lo, hi + 1))


def _pathology(rng: np.random.Generator, task: str, cls: str, look: Look,
               k: int) -> tuple[Lesion, list[int]]:
    """The subject's lesion (a plain ``Lesion`` when healthy) and its slice z (mm)."""
    classes = TASKS[task]
    if task == "tumor":
        if cls in TUMOURS:
            tumour = TUMOURS[cls](rng)
            return tumour, tumour_slices(rng, tumour, look, k)
        # Healthy: slices of a phantom tumour, so slice level is no giveaway.
        phantom = TUMOURS[sorted(TUMOURS)[int(rng.integers(len(TUMOURS)))]](rng)
        return Lesion(), tumour_slices(rng, phantom, look, k)
    if task == "alzheimer":
        atrophy = Atrophy(grade=classes.index(cls), severity=float(rng.uniform(0.8, 1.2)))
        return atrophy, spread(rng, _z_range(ALZHEIMER_Z, k), k)
    if task == "parkinsons":
        nigra = Nigral.sample(rng, parkinson=cls == classes[-1])
        return nigra, spread(rng, _z_range(PARKINSON_Z, k), k)
    if task == "ms":
        ms, slices = ms_subject(rng, k)
        return (ms if cls == "lesion" else Lesion()), slices
    raise ValueError(f"unknown task {task!r}")


@dataclass
class Subject:
    id: str
    cls: str
    lesion: Lesion
    slices: list[int]  # MNI z (mm)
    look: Look
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
    h, w = canvas_shape()
    rot = math.radians(rng.uniform(-10, 10))
    scale = rng.uniform(0.92, 1.08) * np.array([rng.uniform(0.97, 1.03), 1.0])
    amp = rng.uniform(1.5, 3.5)
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
    cr, cc = (h - 1) / 2, (w - 1) / 2
    dr, dc = rows - cr, cols - cc
    cos, sin = math.cos(rot), math.sin(rot)
    src_r = cr + (cos * dr - sin * dc) / scale[0]
    src_c = cc + (sin * dr + cos * dc) / scale[1]
    src_r += amp * smooth_noise(rng, (h, w), 5)
    src_c += amp * smooth_noise(rng, (h, w), 5)
    info = {"rotation_deg": math.degrees(rot), "scale_row": float(scale[0]),
            "scale_col": float(scale[1]), "displacement_mm": amp}
    return np.stack([src_r, src_c]).astype(np.float32), info


def _seed(seed: int, task: str, cls: str, index: int) -> list[int]:
    """Per-subject seed: independent of generation order and of the other classes."""
    return [seed % 2**64, zlib.crc32(task.encode()), zlib.crc32(cls.encode()), index]


def make_subject(task: str, cls: str, index: int, sid: str, config: SynthConfig) -> Subject:
    rng = np.random.default_rng(_seed(config.seed, task, cls, index))
    look = Look.sample(rng)
    lesion, slices = _pathology(rng, task, cls, look, config.slices_per_subject)
    coords, deformation = _deformation(rng)
    return Subject(
        id=sid, cls=cls, lesion=lesion, slices=slices, look=look, coords=coords,
        texture=smooth_noise(rng, canvas_shape(), 12), margin=float(rng.uniform(0.03, 0.10)),
        offset=(float(rng.uniform(-0.5, 0.5)), float(rng.uniform(-0.5, 0.5))),
        deformation=deformation, rng=rng,
    )
