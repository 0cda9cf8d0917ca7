"""The healthy head every subject shares: per-subject tissue contrasts and layer thicknesses
(:class:`Look`), T1 intensity of brain tissue, and the CSF, skull and scalp drawn around it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .primitives import over, ramp, random_harmonics
from .template import Anatomy, mm_grid


@dataclass
class Look:
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
    def sample(rng: np.random.Generator) -> Look:
        return Look(
            wm=rng.uniform(0.80, 0.92), gm=rng.uniform(0.50, 0.62), csf=rng.uniform(0.06, 0.15),
            detail=rng.uniform(0.4, 0.9), bone=rng.uniform(0.02, 0.08),
            diploe=rng.uniform(0.2, 0.4), fat=rng.uniform(0.75, 0.95),
            skin=rng.uniform(0.40, 0.55), gap=rng.uniform(1.0, 2.5), skull=rng.uniform(5.0, 8.0),
            scalp=rng.uniform(4.0, 7.0), head_wobble=random_harmonics(rng, 0.25, 4),
        )


def tissue_t1(gm: np.ndarray, wm: np.ndarray, resid: np.ndarray, look: Look) -> np.ndarray:
    """T1 intensity of brain and its CSF from tissue fractions, (H, W)."""
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0)
    return look.wm * wm + look.gm * gm + look.csf * csf + look.detail * resid


def draw_head(img: np.ndarray, anat: Anatomy, look: Look, texture: np.ndarray) -> np.ndarray:
    """Surround the brain (H, W) with CSF, skull and scalp; background is 0.

    Inner layers (CSF gap, inner table) follow the brain surface, outer ones (outer table,
    scalp fat, skin) the smoothed convex hull; in between lies marrow (diploe) - a thin band on
    high slices, the textured skull base on low ones.
    """
    gx, gy = mm_grid()
    theta = np.arctan2(gy + 18.0, gx)  # angle about the head centre, ~(0, -18) mm
    wobble = np.ones_like(theta)
    for k, amp, phase, _ in look.head_wobble:
        wobble += amp * np.cos(k * theta + phase)
    table = 0.3 * look.skull * wobble
    outer = look.gap + look.skull * wobble  # outer skull surface, mm outside the hull
    marrow = np.clip(look.diploe + 0.2 * texture, 0.05, 0.7)
    db, dh = anat.off_brain, anat.hull_dist
    out = over(img, look.csf, ramp(db))
    out = over(out, look.bone, ramp(db - look.gap))
    out = over(out, marrow, ramp(db - look.gap - table))
    out = over(out, look.bone, ramp(dh - (outer - table)))
    out = over(out, look.fat, ramp(dh - outer))
    out = over(out, look.skin, ramp(dh - outer - look.scalp * wobble))
    return over(out, 0.0, ramp(dh - outer - look.scalp * wobble - 1.5))
