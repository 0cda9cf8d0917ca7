"""CAM statistics on hand-made maps whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from sslmri_core.explain.cam_stats import (
    area_pct,
    brain_mask,
    energy_share,
    head_baseline_map,
    map_stats,
    peak_location,
    pointing_chance,
    pointing_hit,
    random_blob_mask,
    random_head_mask,
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


def test_a_plateau_peaks_at_its_centre_not_its_corner() -> None:
    """The issue's failure: a coarse map upsampled to flat plateaus, whose argmax is the plateau's first
    pixel (a corner, here outside the lesion the plateau stands for)."""
    cam = np.kron(np.array([[0.2, 0.1], [1.0, 0.3]], np.float32), np.ones((32, 32), np.float32))  # a 2x2 map
    assert np.unravel_index(int(np.argmax(cam)), cam.shape) == (32, 0)  # what the bare argmax took
    row, col = peak_location(cam)
    assert abs(row - 48) <= 3 and abs(col - 16) <= 3  # the centre of the bottom-left quadrant
    lesion = _square(64, 42, 54, 10, 22)  # a lesion in the middle of that cell
    assert pointing_hit(cam, lesion, dilate_px=0) is True
    flat = np.zeros((64, 64), np.float32)
    flat[20:41, 10:31] = 1.0  # an interior plateau (21 x 21): its centre is (30, 20)
    assert peak_location(flat) == (30, 20)
    sharp = np.zeros((64, 64), np.float32)
    sharp[5, 60] = 1.0  # a single-pixel peak stays where it is, even at the border
    assert peak_location(sharp) == (5, 60)


def test_pointing_chance_is_the_dilated_lesions_share_of_the_head() -> None:
    head = _square(64, 12, 52, 12, 52)  # 40 x 40 = 1600 pixels
    lesion = _square(64, 20, 30, 20, 30)  # 10 x 10 inside
    assert pointing_chance(head, lesion, dilate_px=0) == pytest.approx(100 / 1600)
    straddling = _square(64, 7, 17, 30, 40)  # half of it outside the head: only the inside half counts
    assert pointing_chance(head, straddling, dilate_px=0) == pytest.approx(50 / 1600)
    dilated = ndimage.binary_dilation(lesion, iterations=3)
    assert pointing_chance(head, lesion, dilate_px=3) == pytest.approx(dilated.sum() / 1600)  # as pointing_hit dilates
    assert pointing_chance(head, None) is None and pointing_chance(np.zeros_like(head), lesion) is None
    assert pointing_chance(head, np.zeros_like(head)) is None


def test_random_deletion_regions_lie_inside_the_head_with_exactly_k_pixels() -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    head = ((yy - 32) / 26.0) ** 2 + ((xx - 32) / 20.0) ** 2 <= 1  # about 40% of the image
    k = round(64 * 64 * 0.2)
    draws = [random_head_mask(head, k, rng) for _ in range(5)]
    for m in draws:
        assert m.sum() == k and not (m & ~head).any()
        assert ndimage.label(m)[1] <= 16  # smooth blobs, not scattered pixels
    assert len({m.tobytes() for m in draws}) == 5  # random, not fixed
    assert np.mean(draws, axis=0)[head].min() < 1.0  # not simply the whole head
    small = _square(64, 30, 34, 30, 34)  # 16 pixels < k: all of it, then the background nearest to it
    m = random_head_mask(small, 100, rng)
    assert m.sum() == 100 and (m & small).sum() == 16
    dist = ndimage.distance_transform_edt(~small)
    assert dist[m & ~small].max() <= dist[~m].min()
    assert random_head_mask(np.zeros((32, 32), bool), 50, rng).sum() == 50  # no head: anywhere


def test_the_model_free_baseline_map_ranks_the_heads_core_first() -> None:
    head = _square(64, 8, 56, 16, 48)  # 48 x 32
    base = head_baseline_map(head)
    assert base.shape == head.shape and base.dtype == np.float32
    assert base.max() == pytest.approx(1.0) and not base[~head].any()
    top = top_fraction_mask(base, 10.0)
    assert not (top & ~head).any()
    ys, xs = np.nonzero(top)
    assert abs(ys.mean() - 31.5) < 1.5 and abs(xs.mean() - 31.5) < 1.5  # the central core
    assert ndimage.label(top)[1] == 1  # one contiguous region, like a CAM's top
    empty = head_baseline_map(np.zeros((16, 16), bool))  # a blank slice: the image's centre
    assert empty.max() == pytest.approx(1.0) and empty[0, 0] < empty[8, 8]


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
    assert stats["pointing_chance"] is None  # given exactly where the pointing game is played


def test_map_stats_pairs_the_pointing_game_with_its_chance() -> None:
    cam = np.zeros((16, 16), np.float32)
    cam[5, 5] = 1.0
    head, lesion = _square(16, 2, 14, 2, 14), _square(16, 4, 6, 4, 6)
    stats = map_stats(cam, threshold=0.5, brain=head, lesion=lesion, dilate_px=0)
    assert stats["pointing_hit"] is True and stats["pointing_chance"] == pytest.approx(4 / 144)
    assert map_stats(cam, threshold=0.5, brain=head, lesion=None)["pointing_chance"] is None
