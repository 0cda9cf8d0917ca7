"""Numeric drawing primitives on the canvas: smooth noise, soft edges, windows, irregular
blobs, mass-effect warps, blending, and float rounding for JSON."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .template import canvas_shape, mm_grid, to_px


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


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Zero-mean, unit-std smooth noise of ``shape`` with ~``cells`` blobs per side."""
    field_ = _upsample(rng.standard_normal((cells, cells)), shape)
    return (field_ - field_.mean()) / (field_.std() + 1e-6)


def soft(rho: np.ndarray, edge: float) -> np.ndarray:
    """Soft inside-indicator of ``rho < 1`` with a linear edge ``edge`` wide (rho units)."""
    return np.clip((1.0 - rho) / edge + 0.5, 0.0, 1.0)


def ramp(d: np.ndarray, width: float = 1.0) -> np.ndarray:
    """0 at ``d <= 0`` rising to 1 at ``d >= width`` (anti-aliased layer boundaries)."""
    return np.clip(d / width, 0.0, 1.0)


def window(x: float, y: float, radius: float) -> tuple[slice, slice]:
    """Canvas window around MNI (x, y) mm covering ``radius`` mm, clipped to the canvas."""
    h, w = canvas_shape()
    r, c = to_px(x, y)
    r0, r1 = max(int(r - radius) - 2, 0), min(int(r + radius) + 3, h)
    c0, c1 = max(int(c - radius) - 2, 0), min(int(c + radius) + 3, w)
    return slice(r0, max(r0, r1)), slice(c0, max(c0, c1))


def random_harmonics(rng: np.random.Generator, amplitude: float, kmax: int = 5) -> list[list[float]]:
    """Random boundary wobble: rows (k, amplitude, phase, z-twist) for k = 2..kmax."""
    return [
        [k, float(rng.uniform(0, amplitude) / math.sqrt(k - 1)), float(rng.uniform(0, 2 * math.pi)),
         float(rng.uniform(-1.5, 1.5))]
        for k in range(2, kmax + 1)
    ]


def blob_rho(
    win: tuple[slice, slice], z: float, centre: tuple[float, float, float],
    radii: tuple[float, float, float], harmonics: list[list[float]],
) -> np.ndarray:
    """Normalised radius of an irregular ellipsoid on a canvas window (< 1 inside)."""
    gx, gy = mm_grid()
    dx = (gx[win] - centre[0]) / radii[0]
    dy = (gy[win] - centre[1]) / radii[1]
    dz = (z - centre[2]) / radii[2]
    theta = np.arctan2(dy, dx)
    wobble = np.ones_like(dx)
    for k, amp, phase, twist in harmonics:
        wobble += amp * np.cos(k * theta + phase + twist * dz)
    return np.sqrt(dx * dx + dy * dy + dz * dz) / np.maximum(wobble, 0.3)


def radial_push(
    x: float, y: float, amount: float, reach: float
) -> tuple[tuple[slice, slice], np.ndarray]:
    """Mass effect centred at MNI (x, y): source coordinates (2, h, w) for a window.

    Output radius r samples radius r * (1 - amount * exp(-(r/reach)^2)) (monotonic for
    amount < 1), so tissue moves away from the centre; a negative amount pulls it in.
    """
    win = window(x, y, 2.5 * reach)
    r0, c0 = to_px(x, y)
    rows, cols = np.mgrid[win[0], win[1]].astype(np.float32)
    dr, dc = rows - r0, cols - c0
    factor = 1.0 - amount * np.exp(-(dr * dr + dc * dc) / (reach * reach))
    return win, np.stack([r0 + dr * factor, c0 + dc * factor])


def round_json(value: Any) -> Any:
    """Round floats (also inside lists) for stable, readable JSON."""
    if isinstance(value, (list, tuple)):
        return [round_json(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return round(float(value), 3)
    if isinstance(value, np.integer):
        return int(value)
    return value


def over(img: np.ndarray, value: Any, weight: np.ndarray) -> np.ndarray:
    """``img`` with ``value`` laid over it at opacity ``weight`` (all broadcastable)."""
    return img * (1 - weight) + value * weight


def blend(img: np.ndarray, win: tuple[slice, slice], alpha: np.ndarray, value: Any) -> None:
    """In place: lay ``value`` over the window ``win`` of ``img`` at opacity ``alpha``."""
    img[win] = over(img[win], value, alpha)
