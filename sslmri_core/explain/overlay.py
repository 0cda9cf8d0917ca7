"""Drawing class activation maps over grey images: window/level, colormaps and the blended overlay.

Torch-free (numpy and matplotlib's colormaps only), so the dashboard redraws an overlay on every
slider move without loading a model; :mod:`sslmri_core.explain.cam` computes the maps.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def apply_window(image: np.ndarray, level: float, width: float) -> np.ndarray:
    """Window/level on 0-255 grey values -> uint8: ``level - width/2`` maps to black, ``level + width/2``
    to white (a width under 1 counts as 1)."""
    width = max(float(width), 1.0)
    lo = float(level) - width / 2
    out = (np.asarray(image).astype(np.float32) - lo) / width * 255.0
    return np.clip(out, 0, 255).astype(np.uint8)


def level_width_window(level: float, width: float) -> tuple[float, float]:
    """The ``(low, high)`` grey range of a window ``level`` and ``width`` (a width under 1 counts as 1)."""
    width = max(float(width), 1.0)
    return float(level) - width / 2, float(level) + width / 2


def _colormap(name: str) -> Callable[[np.ndarray], np.ndarray]:
    import matplotlib

    try:
        return matplotlib.colormaps[name]
    except KeyError:
        raise ValueError(f"colormap: unknown matplotlib colormap {name!r} (e.g. jet, inferno, viridis)") from None


def apply_colormap(cam: np.ndarray, colormap: str) -> np.ndarray:
    """A map in [0, 1] coloured by the matplotlib ``colormap``: float32 RGB ``(..., 3)`` in [0, 1]
    (values outside [0, 1] take the colormap's end colours)."""
    return _colormap(colormap)(np.asarray(cam))[..., :3].astype(np.float32)


def render_overlay(
    image_u8: np.ndarray,
    cam: np.ndarray,
    *,
    opacity: float = 0.5,
    colormap: str = "jet",
    threshold: float = 0.0,
    window: tuple[float, float] | None = None,
) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)``: the grey image (window/level ``(low, high)`` in its 0-255 grey values)
    under the map coloured by a matplotlib ``colormap``; map values below ``threshold`` stay transparent."""
    img = np.asarray(image_u8, dtype=np.float32)
    cam = np.asarray(cam, dtype=np.float32)
    if img.ndim != 2 or img.shape != cam.shape:
        raise ValueError(f"image and cam must be 2-D of one shape, got {img.shape} and {cam.shape}")
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    cmap = _colormap(colormap)
    lo, hi = window if window is not None else (0.0, 255.0)
    if hi <= lo:
        raise ValueError(f"window must be (low, high) with high > low, got {window}")
    grey = np.clip((img - lo) / (hi - lo), 0.0, 1.0)[..., None].repeat(3, axis=2)
    cam = np.clip(np.nan_to_num(cam), 0.0, 1.0)
    colour = cmap(cam)[..., :3].astype(np.float32)
    alpha = (opacity * (cam >= threshold))[..., None].astype(np.float32)
    return np.round((1.0 - alpha) * grey * 255.0 + alpha * colour * 255.0).astype(np.uint8)
