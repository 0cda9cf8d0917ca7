"""Alzheimer's task: atrophy graded by class (ventricles and sulci widen with the grade)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .lesion import Lesion
from .phantom import Look
from .primitives import blend, ramp, round_json
from .template import Anatomy

# Slice range (MNI z, mm) with the ground truth in view, (preferred, widest): widened by subject._z_range.
ALZHEIMER_Z = ((0, 28), (-6, 38))  # lateral-ventricle bodies and frontal horns


@dataclass
class Atrophy(Lesion):
    """Alzheimer's grade g (0-3): ventricles widen ~1.5 g mm, sulci / cortex ~0.6 g mm."""

    grade: int
    severity: float
    ventricle_mm: float = 0.0
    sulcus_mm: float = 0.0
    kind: str = "atrophy"

    def __post_init__(self) -> None:
        self.ventricle_mm = 1.5 * self.grade * self.severity
        self.sulcus_mm = 0.6 * self.grade * self.severity

    def paint(self, img: np.ndarray, anat: Anatomy, z: float, look: Look,
              texture: np.ndarray, tissue: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        if self.grade == 0:
            return np.zeros(img.shape, dtype=bool)
        # Irregular widening: the distance threshold wobbles with the subject's texture.
        vent = ramp(self.ventricle_mm - (anat.vent_dist + 0.7 * texture), 1.5)
        sulc = ramp(self.sulcus_mm - (anat.sulc_dist + 0.3 * texture), 1.0) * (anat.depth < 20)
        alpha = np.maximum(vent, sulc) * anat.brain * (1 - anat.csf)
        full = (slice(None), slice(None))
        blend(img, full, alpha, look.csf)
        return alpha > 0.3

    def info(self) -> dict[str, Any]:
        return {k: round_json(v) for k, v in asdict(self).items()}
