"""MS task: T1-hypointense periventricular white-matter lesions, and slices that cut them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .lesion import Lesion, spread
from .phantom import Look
from .primitives import blend, round_json, soft, window
from .template import Anatomy, anatomy, mm_grid, z_index

MS_Z = (0, 30)  # lesion centres (MNI z, mm): periventricular white matter


@dataclass
class MSLesions(Lesion):
    """3-10 small ovoid periventricular white-matter lesions, long axis pointing away from the
    ventricles (Dawson's fingers); T1-hypointense."""

    lesions: list[dict[str, Any]] = field(default_factory=list)
    kind: str = "ms"

    @staticmethod
    def sample_one(rng: np.random.Generator) -> dict[str, Any]:
        """One lesion: centre (mm), half-axes along / across the radial direction and in z."""
        while True:
            z = float(rng.integers(MS_Z[0], MS_Z[1] + 1))
            anat = anatomy(z_index(z))
            rows, cols = np.nonzero((anat.wm > 0.7) & (anat.vent_dist >= 2.5)
                                    & (anat.vent_dist <= 9.0) & (anat.depth > 8.0))
            if len(rows):
                break
        i = rng.integers(len(rows))
        r, c = int(rows[i]), int(cols[i])
        gx, gy = mm_grid()
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

    def paint(self, img: np.ndarray, anat: Anatomy, z: float, look: Look,
              texture: np.ndarray, tissue: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        mask = np.zeros(img.shape, dtype=bool)
        gx, gy = mm_grid()
        gm, wm = tissue
        for les in self.lesions:
            cx, cy, cz = les["centre"]
            tz = ((z - cz) / les["z_half"]) ** 2
            if tz >= 1.0:
                continue
            win = window(cx, cy, les["long"] + 1)
            dx, dy = gx[win] - cx, gy[win] - cy
            ux, uy = math.cos(les["angle"]), math.sin(les["angle"])
            along, across = dx * ux + dy * uy, -dx * uy + dy * ux
            rho = np.sqrt((along / les["long"]) ** 2 + (across / les["short"]) ** 2 + tz)
            alpha = soft(rho, 0.25) * np.clip(wm[win] + gm[win], 0, 1)
            blend(img, win, alpha, les["level"] * look.wm)
            mask[win] |= alpha > 0.5
        return mask

    def info(self) -> dict[str, Any]:
        return {"kind": self.kind, "count": len(self.lesions), "lesions": _r_dicts(self.lesions)}


def _r_dicts(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: round_json(v) for k, v in item.items()} for item in items]


def ms_subject(rng: np.random.Generator, k: int) -> tuple[MSLesions, list[int]]:
    """3-10 lesions (more only if ``k`` slices need them); slices each cut >= 1 lesion."""
    lesions = [MSLesions.sample_one(rng) for _ in range(int(rng.integers(3, 11)))]
    visible = {z for les in lesions for z in MSLesions.visible_z(les)}
    while len(visible) < k:
        lesions.append(MSLesions.sample_one(rng))
        visible |= set(MSLesions.visible_z(lesions[-1]))
    return MSLesions(lesions=lesions), spread(rng, sorted(visible), k)
