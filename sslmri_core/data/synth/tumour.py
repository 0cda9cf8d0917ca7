"""Tumour task: glioma, meningioma and pituitary macroadenoma (post-contrast-like T1), and the
slices that cut clearly through a tumour."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from .lesion import Lesion, spread
from .phantom import Look
from .primitives import (
    blend,
    blob_rho,
    radial_push,
    ramp,
    random_harmonics,
    round_json,
    soft,
    window,
)
from .template import Anatomy, brain_mask, load_atlas, mm_grid, to_px, z_index


@functools.lru_cache(maxsize=1)
def _glioma_sites() -> np.ndarray:
    """Candidate glioma centres: deep hemispheric white matter (>= 14 mm inside the brain,
    |x| >= 14 mm, z in [-5, 40] mm) on a 2 mm grid, (n, 3) MNI mm."""
    atlas = load_atlas()
    depth = ndimage.distance_transform_edt(atlas.brain[::2, ::2, ::2]) * 2.0
    voxels = np.argwhere((atlas.wm[::2, ::2, ::2] > 0.85) & (depth >= 14.0))
    sites = np.asarray(atlas.origin) + 2.0 * voxels
    keep = (np.abs(sites[:, 0]) >= 14.0) & (sites[:, 2] >= -5.0) & (sites[:, 2] <= 40.0)
    return sites[keep].astype(np.float32)


@dataclass
class Tumour(Lesion):
    """A mass: ellipsoid of in-plane ``radius`` and ``z_radius`` (mm) about ``centre`` (MNI)."""

    centre: tuple[float, float, float]
    radius: float
    z_radius: float

    def _section(self, z: float) -> float:
        """In-plane radius scale of the mass at MNI z (0 outside it)."""
        t = (z - self.centre[2]) / self.z_radius
        return math.sqrt(max(0.0, 1.0 - t * t))

    def area(self, z: float, look: Look) -> float:
        """Approximate mask area at MNI z (mm^2), for choosing slices that show the tumour."""
        return math.pi * (self.radius * self._section(z)) ** 2

    def info(self) -> dict[str, Any]:
        return {k: round_json(v) for k, v in asdict(self).items() if not k.endswith("shape")}


@dataclass
class Glioma(Tumour):
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
    def sample(rng: np.random.Generator) -> Glioma:
        sites = _glioma_sites()
        x, y, z = (float(v) for v in sites[rng.integers(len(sites))])
        r = rng.uniform(12.0, 22.0)
        return Glioma(
            centre=(x, y, z), radius=r, z_radius=r * rng.uniform(0.75, 1.0),
            core=rng.uniform(0.35, 0.6), oedema=rng.uniform(1.6, 2.2),
            push_amount=rng.uniform(0.25, 0.45), shape=random_harmonics(rng, 0.14),
            oedema_shape=random_harmonics(rng, 0.3), rim_gain=rng.uniform(1.08, 1.25),
            core_level=rng.uniform(0.08, 0.2), oedema_level=rng.uniform(0.45, 0.58),
        )

    def push(self, z: float) -> tuple[tuple[slice, slice], np.ndarray] | None:
        s = self._section(z)
        if s < 0.2:
            return None
        return radial_push(self.centre[0], self.centre[1], self.push_amount, self.radius * s * 1.3)

    def paint(self, img: np.ndarray, anat: Anatomy, z: float, look: Look,
              texture: np.ndarray, tissue: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        mask = np.zeros(img.shape, dtype=bool)
        if abs(z - self.centre[2]) > self.z_radius * self.oedema:
            return mask
        win = window(self.centre[0], self.centre[1], self.radius * self.oedema * 1.4)
        gm, wm = tissue
        radii = (self.radius, self.radius, self.z_radius)
        rho = blob_rho(win, z, self.centre, radii, self.shape)
        oedema_radii = (self.radius * self.oedema, self.radius * self.oedema, self.z_radius * self.oedema)
        rho_e = blob_rho(win, z, self.centre, oedema_radii, self.oedema_shape)
        # Vasogenic oedema spreads along white matter, hardly into cortex.
        a_oed = soft(rho_e, 0.15) * np.clip(wm[win] + 0.25 * gm[win], 0, 1)
        a_mass = soft(rho, 1.5 / self.radius)
        rim = look.wm * self.rim_gain * (1 + 0.08 * texture[win])
        core = look.csf + self.core_level
        value = rim + (core - rim) * soft(rho / self.core, 2.0 / (self.radius * self.core))
        blend(img, win, a_oed, self.oedema_level * look.wm)
        blend(img, win, a_mass, value)
        mask[win] = (a_mass > 0.5) | (a_oed > 0.5)
        return mask


@dataclass
class Meningioma(Tumour):
    """Homogeneous bright extra-axial convexity mass: broad dural base on the inner skull table,
    indenting the cortex."""

    push_amount: float
    level: float
    kind: str = "meningioma"

    @staticmethod
    def sample(rng: np.random.Generator) -> Meningioma:
        z = float(rng.integers(10, 46))
        angle = rng.uniform(0, 2 * math.pi)
        sx, sy = _brain_surface(z_index(z), angle)
        r = rng.uniform(13.0, 22.0)
        # Centre near the brain surface; the skull clips the outer part, the push makes room.
        out = r * rng.uniform(-0.35, 0.05)
        cx, cy = sx + out * math.cos(angle), sy + out * math.sin(angle)
        return Meningioma(centre=(cx, cy, z), radius=r, z_radius=r * rng.uniform(0.8, 1.0),
                          push_amount=rng.uniform(0.45, 0.65), level=rng.uniform(1.05, 1.2))

    def push(self, z: float) -> tuple[tuple[slice, slice], np.ndarray] | None:
        s = self._section(z)
        if s < 0.2:
            return None
        return radial_push(self.centre[0], self.centre[1], self.push_amount, self.radius * s)

    def _alpha(self, z: float, off_brain: np.ndarray,
               gap: float) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
        """Window, soft occupancy of the mass and of the CSF cleft around it (the extra-axial
        sign), both clipped at the inner skull table: the flat side is the dural base."""
        win = window(self.centre[0], self.centre[1], self.radius * 1.3)
        rho = blob_rho(win, z, self.centre, (self.radius, self.radius, self.z_radius), [])
        inside_skull = 1 - ramp(off_brain[win] - gap - 0.5)
        mass = soft(rho, 1.5 / self.radius) * inside_skull
        cleft = np.clip(soft(rho / 1.12, 1.5 / self.radius) * inside_skull - mass, 0, 1)
        return win, mass, cleft

    def area(self, z: float, look: Look) -> float:
        # The skull clips the mass and moves with z: measure instead of estimating.
        if self._section(z) == 0.0:
            return 0.0
        _, mass, _ = self._alpha(z, brain_mask(z_index(z))[1], look.gap)
        return float((mass > 0.5).sum())

    def paint(self, img: np.ndarray, anat: Anatomy, z: float, look: Look,
              texture: np.ndarray, tissue: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        mask = np.zeros(img.shape, dtype=bool)
        if self._section(z) == 0.0:
            return mask
        win, mass, cleft = self._alpha(z, anat.off_brain, look.gap)
        blend(img, win, 0.7 * cleft, look.csf)
        blend(img, win, mass, look.wm * self.level * (1 + 0.04 * texture[win]))
        mask[win] = mass > 0.5
        return mask


def _brain_surface(k: int, angle: float) -> tuple[float, float]:
    """Where a ray from the slice's brain centroid at ``angle`` (MNI x-y plane) leaves the brain."""
    inside = brain_mask(k)[0]
    gx, gy = mm_grid()
    cx, cy = float(gx[inside].mean()), float(gy[inside].mean())
    last = (cx, cy)
    for step in np.arange(0.0, 120.0, 0.5):
        x, y = cx + step * math.cos(angle), cy + step * math.sin(angle)
        r, c = (round(v) for v in to_px(x, y))
        if not (0 <= r < inside.shape[0] and 0 <= c < inside.shape[1]):
            break
        if inside[r, c]:
            last = (x, y)
    return last


@dataclass
class Pituitary(Tumour):
    """Bright round macroadenoma in the midline at the sella, extending upwards."""

    level: float
    kind: str = "pituitary"

    @staticmethod
    def sample(rng: np.random.Generator) -> Pituitary:
        r = rng.uniform(6.0, 10.0)
        centre = (rng.uniform(-2, 2), rng.uniform(0, 6), rng.uniform(-32, -24))
        return Pituitary(centre=centre, radius=r, z_radius=r * rng.uniform(1.0, 1.4),
                         level=rng.uniform(0.95, 1.15))

    def push(self, z: float) -> tuple[tuple[slice, slice], np.ndarray] | None:
        s = self._section(z)
        if s < 0.45:
            return None
        return radial_push(self.centre[0], self.centre[1], 0.2, self.radius * s * 1.2)

    def paint(self, img: np.ndarray, anat: Anatomy, z: float, look: Look,
              texture: np.ndarray, tissue: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        mask = np.zeros(img.shape, dtype=bool)
        win = window(self.centre[0], self.centre[1], self.radius * 1.2)
        rho = blob_rho(win, z, self.centre, (self.radius, self.radius * 0.9, self.z_radius), [])
        alpha = soft(rho, 1.2 / self.radius)
        blend(img, win, alpha, look.wm * self.level * (1 + 0.05 * texture[win]))
        mask[win] = alpha > 0.5
        return mask


TUMOURS: dict[str, Callable[[np.random.Generator], Tumour]] = {
    "glioma": Glioma.sample,
    "meningioma": Meningioma.sample,
    "pituitary": Pituitary.sample,
}


def tumour_slices(rng: np.random.Generator, tumour: Tumour, look: Look, k: int) -> list[int]:
    """Slices (z mm) clearly through the tumour: its mask covers >= 1/4 of its largest
    cross-section and >= 20 mm^2."""
    zc, zr = tumour.centre[2], tumour.z_radius
    area = {z: tumour.area(z, look) for z in range(math.ceil(zc - zr), math.floor(zc + zr) + 1)}
    least = max(20.0, max(area.values()) / 4)
    return spread(rng, [z for z, a in area.items() if a >= least], k)
