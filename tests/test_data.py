"""Image folders: class and subject from the layout, odd image modes, bad files reported."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sslmri_core.data import DataError, decode_image, load_folder, parse_subject, scan_folder


def _png(path: Path, size: tuple[int, int] = (40, 20), mode: str = "L", value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode in ("L", "I;16") else (value,) * len(mode)).save(path)


def test_subject_patterns_of_known_layouts() -> None:
    assert parse_subject("OAS1_0028_MR1_mpr-1_100.jpg") == "OAS1_0028"
    assert parse_subject("patient19_FLAIR_z085.png") == "patient19"
    assert parse_subject("sub-tumor0003_slice-080.png") == "sub-tumor0003"
    assert parse_subject("Tr-gl_0010.jpg") is None
    assert parse_subject("scan_A12_x.png", r"scan_([A-Z]\d+)") == "A12"


def test_every_file_is_used_or_reported(tmp_path: Path) -> None:
    _png(tmp_path / "glioma" / "sub-1_slice-001.png")
    _png(tmp_path / "glioma" / "sub-1_slice-001_mask.png")  # a mask, not an image
    _png(tmp_path / "notumor" / "sub-2_slice-001.jpg", mode="RGB")
    _png(tmp_path / "notumor" / "sub-3 ü space.png", mode="RGBA")
    _png(tmp_path / "site2" / "notumor" / "sub-4_slice-9.png", mode="I;16", value=3000)  # class folder at any depth
    (tmp_path / "glioma" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (tmp_path / "glioma" / "empty.jpg").write_bytes(b"")
    (tmp_path / "glioma" / "notes.txt").write_text("hello")
    data = load_folder(tmp_path, size=32)
    reasons = dict(data.unusable)
    assert len(data.items) == 4 and data.images.shape == (4, 32, 32) and data.images.dtype == np.uint8
    assert set(reasons) == {str(tmp_path / "glioma" / n) for n in ("broken.png", "empty.jpg", "notes.txt")}
    assert all(reasons.values())
    assert data.classes == ["glioma", "notumor"]
    assert data.items[0].mask_path and data.items[0].mask_path.endswith("_mask.png")


def test_aspect_ratio_is_kept_by_padding(tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    Image.new("L", (80, 40), 255).save(path)
    out = decode_image(str(path), 40)
    assert out[0].max() == 0 and out[-1].max() == 0  # padded rows above and below
    assert out[20].min() == 255


def test_nothing_usable_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"junk")
    with pytest.raises(DataError, match="no usable images"):
        load_folder(tmp_path, 32)
    with pytest.raises(DataError, match="not found"):
        scan_folder(tmp_path / "missing")
