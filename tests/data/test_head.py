"""``--preprocess``: the head crop and the intensity normalisation, at decode time and through the cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from sslmri_core.data.decode import decode_image
from sslmri_core.data.head import brain_mask, head_box, prepare
from sslmri_core.data.loading import load_folder


def _head(side: int = 120, seed: int = 0) -> np.ndarray:
    """A textured ellipse "head" (uint8 ``(side, side)``) with a bright blob inside it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side] / side
    inside = ((yy - 0.5) / 0.45) ** 2 + ((xx - 0.5) / 0.38) ** 2 < 1
    img = np.where(inside, 90 + 40 * np.sin(12 * xx) * np.cos(9 * yy) + rng.normal(0, 4, (side, side)), 0)
    img[(yy - 0.4) ** 2 + (xx - 0.6) ** 2 < 0.01] = 200
    return np.clip(img, 0, 255).astype(np.uint8)


def _framed(head: np.ndarray, side: int, top: int, left: int) -> np.ndarray:
    out = np.zeros((side, side), np.uint8)
    out[top : top + head.shape[0], left : left + head.shape[1]] = head
    return out


def _save(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


def test_the_head_crop_makes_framing_irrelevant(tmp_path: Path) -> None:
    head = _head()
    small = _save(tmp_path / "a.png", _framed(head, 400, 30, 250))  # a small head in a corner of a big frame
    centred = _save(tmp_path / "b.png", _framed(head, 200, 40, 40))  # the same head, centred in a tight frame
    plain = [decode_image(p, 64) for p in (small, centred)]
    cropped = [decode_image(p, 64, "crop") for p in (small, centred)]
    assert np.abs(plain[0].astype(int) - plain[1]).mean() > 20  # without the crop the framing is what differs
    assert np.abs(cropped[0].astype(int) - cropped[1]).mean() < 8  # with it, both give the same input
    assert brain_mask(cropped[0]).mean() > 0.5 > 0.1 > brain_mask(plain[0]).mean()  # pixels go to the head


def test_normalisation_inside_the_head_undoes_a_brighter_scanner(tmp_path: Path) -> None:
    image = _framed(_head(), 160, 20, 20)
    brighter = np.clip(image.astype(np.float32) * 1.2 + 12 * (image > 0), 0, 255).astype(np.uint8)  # gain and offset
    a, b = (decode_image(_save(tmp_path / f"{n}.png", im), 64, "norm") for n, im in (("a", image), ("b", brighter)))
    raw_a, raw_b = (decode_image(tmp_path / f"{n}.png", 64) for n in ("a", "b"))
    assert np.abs(raw_a.astype(int) - raw_b).mean() > 8
    assert np.abs(a.astype(int) - b).mean() < 4
    assert a[brain_mask(a)].max() == 255  # the head's own range is stretched, not the black frame's


def test_a_slice_without_a_head_is_left_uncropped() -> None:
    speck = np.zeros((100, 100), np.uint8)
    speck[50:53, 50:53] = 200  # under MIN_HEAD_SHARE: not trusted as a head
    assert head_box(brain_mask(speck)) is None
    assert prepare(speck, "crop").shape == (100, 100)


def test_the_cache_keeps_each_preprocessing_apart_and_groups_use_the_plain_decode(tmp_path: Path) -> None:
    for k in range(3):
        for cls in ("a", "b"):
            _save(tmp_path / "data" / cls / f"sub-{cls}{k}_slice-0.png", _framed(_head(seed=k), 300, 10 * k, 150))
    plain = load_folder(tmp_path / "data", 64)
    cropped = load_folder(tmp_path / "data", 64, preprocess="crop+norm")
    again = load_folder(tmp_path / "data", 64, preprocess="crop+norm")  # from the cache
    assert [it.key for it in plain.items] == [it.key for it in cropped.items]
    assert not np.array_equal(plain.images, cropped.images)
    assert np.array_equal(cropped.images, again.images)
    assert np.array_equal(plain.thumbs, cropped.thumbs)  # duplicates and groups never depend on --preprocess
    assert plain.grouping is not None and cropped.grouping is not None
    assert plain.grouping.keys == cropped.grouping.keys
    # a stored scan read again (dashboard, report, gradcam) is the image its model trained on
    from sslmri_core.data.scans import read_scan

    assert np.array_equal(read_scan(cropped.items[0].key, 64, "crop+norm"), cropped.images[0])
