"""Parkinson's task: the substantia nigra, normal ("swallow tail") or with nigrosome-1 lost."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .lesion import Lesion
from .phantom import Look
from .primitives import radial_push, round_json, soft, window
from .template import Anatomy, mm_grid

# Slice range (MNI z, mm) with the ground truth in view, (preferred, widest): widened by subject._z_range.
PARKINSON_Z = ((-17, -5), (-19, -3))  # midbrain with the substantia nigra (z -20..-2)


@dataclass
class Nigral(Lesion):
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
    def sample(rng: np.random.Generator, parkinson: bool) -> Nigral:
        return Nigral(
            parkinson=parkinson, offset=(rng.uniform(-1, 1), rng.uniform(-1, 1)),
            band_dark=rng.uniform(0.15, 0.25) if parkinson else rng.uniform(0.0, 0.05),
            dot_bright=rng.uniform(0.0, 0.03) if parkinson else rng.uniform(0.2, 0.3),
            narrowing=rng.uniform(0.06, 0.1) if parkinson else 0.0,
        )

    def push(self, z: float) -> tuple[tuple[slice, slice], np.ndarray] | None:
        if self.narrowing == 0.0:
            return None
        return radial_push(0.0, -24.0 + self.offset[1], -self.narrowing, 16.0)

    def _ellipses(self, z: float) -> list[tuple[tuple[slice, slice], np.ndarray, np.ndarray]]:
        """Per side: (window, band rho, dot rho) of the nigra at MNI z."""
        gx, gy = mm_grid()
        out = []
        for side in (-1.0, 1.0):
            cx, cy = side * (9.5 + self.offset[0]), -20.0 + self.offset[1]
            win = window(cx, cy, 9.0)
            dx, dy = gx[win] - cx, gy[win] - cy
            # Long axis from anteromedial to posterolateral (~50 deg from the x axis).
            ux, uy = side * math.cos(math.radians(50)), -math.sin(math.radians(50))
            along, across = dx * ux + dy * uy, -dx * uy + dy * ux
            tz = ((z + 11.0) / 9.0) ** 2
            band = np.sqrt((along / 6.0) ** 2 + (across / 2.2) ** 2 + tz)
            dot = np.sqrt(((along - 2.5) / 2.5) ** 2 + (across / 2.0) ** 2 + tz)
            out.append((win, band, dot))
        return out

    def paint(self, img: np.ndarray, anat: Anatomy, z: float, look: Look,
              texture: np.ndarray, tissue: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        mask = np.zeros(img.shape, dtype=bool)
        for win, band, dot in self._ellipses(z):
            a_band, a_dot = soft(band, 0.3), soft(dot, 0.4)
            img[win] += look.wm * (self.dot_bright * a_dot - self.band_dark * a_band)
            if self.parkinson:
                mask[win] |= a_band > 0.5
        return mask

    def info(self) -> dict[str, Any]:
        return {k: round_json(v) for k, v in asdict(self).items()}
