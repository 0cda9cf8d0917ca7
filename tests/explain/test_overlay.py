"""Overlays of class activation maps (torch-free drawing: window/level, colormaps, the blend)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sslmri_core.explain.overlay import apply_colormap, apply_window, level_width_window, render_overlay

ROOT = Path(__file__).resolve().parents[2]


def test_overlay_opacity_threshold_colormap_and_window() -> None:
    image = np.tile(np.linspace(0, 255, 32, dtype=np.float32), (32, 1)).astype(np.uint8)
    cam = np.tile(np.linspace(0, 1, 32, dtype=np.float32)[:, None], (1, 32))
    grey = np.repeat(image[..., None], 3, axis=2)
    out = render_overlay(image, cam, opacity=0.6, colormap="jet", threshold=0.0, window=None)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    clear = render_overlay(image, cam, opacity=0.0, colormap="jet", threshold=0.0, window=None)
    np.testing.assert_array_equal(clear, grey)
    assert not np.array_equal(out, render_overlay(image, cam, opacity=0.3, colormap="jet", threshold=0.0, window=None))
    assert not np.array_equal(out, render_overlay(image, cam, opacity=0.6, colormap="gray", threshold=0.0, window=None))
    half = render_overlay(image, cam, opacity=0.6, colormap="jet", threshold=0.5, window=None)
    np.testing.assert_array_equal(half[:15], grey[:15])  # below the threshold: transparent
    assert not np.array_equal(half[20:], grey[20:])
    windowed = render_overlay(image, cam, opacity=0.0, colormap="jet", threshold=0.0, window=(64.0, 128.0))
    assert windowed[0, 0, 0] == 0 and windowed[0, -1, 0] == 255  # values outside the window saturate
    with pytest.raises(ValueError, match="colormap"):
        render_overlay(image, cam, opacity=0.5, colormap="no-such-map", threshold=0.0, window=None)
    with pytest.raises(ValueError, match="opacity"):
        render_overlay(image, cam, opacity=1.5, colormap="jet", threshold=0.0, window=None)


def test_overlay_rejects_mismatched_shapes_and_empty_windows() -> None:
    image = np.zeros((8, 8), np.uint8)
    with pytest.raises(ValueError, match="one shape"):
        render_overlay(image, np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="high > low"):
        render_overlay(image, np.zeros((8, 8), np.float32), window=(100.0, 100.0))


def test_full_opacity_shows_the_colormap_and_nan_counts_as_zero() -> None:
    image = np.full((4, 4), 200, np.uint8)
    cam = np.array([[np.nan, 0.0, 0.5, 1.0]] * 4, np.float32)
    out = render_overlay(image, cam, opacity=1.0, colormap="viridis")
    expected = np.round(apply_colormap(np.nan_to_num(cam), "viridis") * 255.0).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)


def test_window_level_maps_the_window_to_black_and_white() -> None:
    ramp = np.arange(256, dtype=np.uint8)[None, :]
    full = apply_window(ramp, 127.5, 255.0)
    assert full.dtype == np.uint8 and full[0, 0] == 0 and full[0, -1] == 255
    narrow = apply_window(ramp, 128, 20)
    assert (narrow[0, :118] == 0).all() and (narrow[0, 138:] == 255).all() and 0 < narrow[0, 128] < 255
    np.testing.assert_array_equal(apply_window(ramp, 100, 0), apply_window(ramp, 100, 1))  # width under 1 counts as 1
    assert level_width_window(128, 20) == (118.0, 138.0) and level_width_window(50, 0) == (49.5, 50.5)


def test_colormap_gives_float_rgb_in_unit_range() -> None:
    colours = apply_colormap(np.linspace(0, 1, 11, dtype=np.float32), "jet")
    assert colours.shape == (11, 3) and colours.dtype == np.float32
    assert colours.min() >= 0.0 and colours.max() <= 1.0
    np.testing.assert_array_equal(apply_colormap(np.array([0.0, 1.0]), "gray"), [[0, 0, 0], [1, 1, 1]])
    with pytest.raises(ValueError, match="unknown matplotlib colormap"):
        apply_colormap(np.zeros(2), "no-such-map")


def test_overlay_module_imports_without_torch() -> None:
    """The dashboard redraws overlays on every slider move: drawing must not load torch (nor must the package)."""
    code = ("import sys; import sslmri_core.explain, sslmri_core.explain.overlay; "
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=True)
    assert done.stdout.strip() == "False", done.stderr
