"""CAM statistics on hand-made maps whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from sslmri_core.explain.cam_stats import (
    area_pct,
    brain_mask,
    energy_share,
    map_stats,
    pointing_hit,
    random_blob_mask,
    top_fraction_mask,
)


def _square(size: int, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    m = np.zeros((size, size), dtype=bool)
    m[r0:r1, c0:c1] = True
    return m


def test_area_is_the_share_of_pixels_at_or_above_the_threshold() -> None:
    cam = np.zeros((40, 40), np.float32)
    cam[:20, :20] = 0.5  # exactly at the threshold: counts
    cam[20:30, :10] = 0.49  # just below: does not
    assert area_pct(cam, 0.5) == pytest.approx(25.0)
    assert area_pct(cam, 0.4) == pytest.approx(25.0 + 100 * 100 / 1600)
    assert area_pct(np.zeros((8, 8)), 0.5) == 0.0


def test_energy_share_inside_a_mask() -> None:
    cam = np.full((10, 10), 0.1, np.float32)
    mask = _square(10, 0, 5, 0, 10)  # top half
    cam[mask] = 0.3  # inside: 50 x 0.3 = 15, outside: 50 x 0.1 = 5
    assert energy_share(cam, mask) == pytest.approx(0.75)
    assert energy_share(cam, np.zeros_like(mask)) is None  # no lesion: not 0
    assert energy_share(np.zeros((10, 10)), mask) is None  # no activation at all
    assert energy_share(cam, None) is None


def test_pointing_game_counts_the_peak_inside_the_dilated_lesion() -> None:
    lesion = _square(32, 10, 14, 10, 14)
    cam = np.zeros((32, 32), np.float32)
    cam[12, 12] = 1.0
    assert pointing_hit(cam, lesion, dilate_px=0) is True
    cam[:] = 0
    cam[16, 12] = 1.0  # two pixels below the lesion's last row
    assert pointing_hit(cam, lesion, dilate_px=0) is False
    assert pointing_hit(cam, lesion, dilate_px=3) is True
    cam[:] = 0
    cam[30, 30] = 1.0
    assert pointing_hit(cam, lesion, dilate_px=3) is False
    assert pointing_hit(cam, None) is None and pointing_hit(cam, np.zeros_like(lesion)) is None


def test_brain_mask_fills_dark_holes_and_drops_specks_outside_the_head() -> None:
    yy, xx = np.mgrid[:96, :96]
    head = (yy - 48) ** 2 + (xx - 48) ** 2 <= 35**2
    img = np.where(head, 150, 5).astype(np.uint8)
    img[40:56, 40:56] = 10  # a dark ventricle inside the head
    img[2:5, 2:5] = 200  # a bright speck outside (label text, noise)
    mask = brain_mask(img)
    assert mask[48, 48]  # the hole is filled
    assert not mask[3, 3]  # only the largest component
    iou = (mask & head).sum() / (mask | head).sum()
    assert iou > 0.95
    assert not brain_mask(np.zeros((32, 32), np.uint8)).any()


def test_top_fraction_and_random_regions_remove_the_same_area() -> None:
    rng = np.random.default_rng(0)
    cam = rng.random((64, 64)).astype(np.float32)
    top = top_fraction_mask(cam, 20.0)
    assert top.sum() == round(64 * 64 * 0.2)
    assert cam[top].min() >= cam[~top].max()  # it is the top of the map
    a, b = random_blob_mask((64, 64), 20.0, rng), random_blob_mask((64, 64), 20.0, rng)
    assert a.sum() == b.sum() == top.sum()
    assert (a != b).any()  # random, not fixed
    # Smooth blobs like a CAM's top region, not scattered pixels (those would make hundreds of components).
    assert all(ndimage.label(m)[1] <= 16 for m in (a, b))


def test_map_stats_of_an_empty_map() -> None:
    stats = map_stats(np.zeros((16, 16), np.float32), threshold=0.5, brain=_square(16, 2, 14, 2, 14),
                      lesion=_square(16, 4, 6, 4, 6))
    assert stats["intensity"] == 0.0 and stats["area_pct"] == 0.0 and stats["threshold"] == 0.5
    assert stats["in_brain"] is None and stats["pointing_hit"] is None and stats["lesion_energy"] is None
