"""The lesion interface every pathology implements (:class:`Lesion`, itself the healthy "no
lesion"), and the helper that spreads a subject's slices over the candidate levels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .phantom import Look
from .template import Anatomy


@dataclass
class Lesion:
    """Base: no pathology (healthy slices use it too, with an empty mask)."""

    def push(self, z: float) -> tuple[tuple[slice, slice], np.ndarray] | None:
        """Mass effect / atrophy warp of the brain at MNI z: (window, source coords)."""
        return None

    def paint(self, img: np.ndarray, anat: Anatomy, z: float, look: Look,
              texture: np.ndarray, tissue: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """Paint in place onto ``img`` (H, W); ``tissue`` is (gm, wm) after ``push``.
        Returns the lesion mask (H, W) bool."""
        return np.zeros(img.shape, dtype=bool)

    def info(self) -> dict[str, Any]:
        return {}


def spread(rng: np.random.Generator, candidates: list[int], k: int) -> list[int]:
    """``k`` distinct values spread over sorted ``candidates`` (one random pick per chunk)."""
    cands = sorted(set(candidates))
    if len(cands) <= k:
        return cands
    return [int(rng.choice(chunk)) for chunk in np.array_split(np.array(cands), k)]
