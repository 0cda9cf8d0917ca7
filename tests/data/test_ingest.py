"""Manifest and cache: every file used or reported, odd modes decoded, NIfTI sliced, cache reused."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import sslmri_core.data.ingest as ingest
from bad_files import NIFTI_NAN_SLICES, crash_on, nifti_bomb, png_bytes, write_corpus
from cli import app
from sslmri_core.data.decode import decode_image
from sslmri_core.data.ingest import build_manifest
from sslmri_core.data.sources import DataError


@pytest.fixture()
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def test_every_file_is_used_or_reported_with_its_reason(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data"
    expected = write_corpus(root)
    locked = root / "glioma" / "sub-15_locked.png"
    locked.write_bytes(png_bytes("L"))
    locked.chmod(0)
    expected["glioma/sub-15_locked.png"] = "permission denied"
    if os_is_root():  # root reads anything: make the read fail the way it does for other users
        real = Path.read_bytes
        monkeypatch.setattr(Path, "read_bytes", lambda p: (_ for _ in ()).throw(PermissionError(13, "denied"))
                            if p == locked else real(p))

    manifest, images = build_manifest(root, 32, cache_root=cache)
    report = manifest.check_summary()
    reasons = {Path(u["path"]).relative_to(root).as_posix(): u["reason"] for u in report["unusable"]}
    for rel, fragment in expected.items():
        if fragment is None:
            assert rel not in reasons, f"{rel} should be usable: {reasons.get(rel)}"
        else:
            assert fragment in reasons.get(rel, ""), f"{rel}: expected '{fragment}', got {reasons.get(rel)!r}"
    assert report["files"] == report["usable"] + len(report["unusable"])
    assert report["usable"] == sum(v is None for v in expected.values())
    assert report["images"] == report["usable"] - 1 + NIFTI_NAN_SLICES == len(images)  # one NIfTI, several slices
    assert images.shape[1:] == (32, 32) and images.dtype == np.uint8
    # Each usable row has its own image (rows and images in the same order), and odd modes decode to the
    # same grey as an L image of the same pixels.
    decoded = {row.rel_path: img for row, img in zip(manifest.usable, images) if row.slice_index is None}
    grey = decoded["glioma/sub-01_L.png"]
    assert grey.max() == 120 and (grey == 120).mean() > 0.5  # the file's grey value, padded with black
    for rel in ("glioma/sub-02_rgb.png", "glioma/sub-05_palette.png", "notumor/sub-09_tiff.tif"):
        np.testing.assert_array_equal(decoded[rel], grey, err_msg=rel)
    assert decoded["glioma/sub-03_rgba.png"].max() == round(120 * 120 / 255)  # alpha 120 over black
    assert decoded["glioma/sub-08_wide.bmp"].max() == 120 and (decoded["glioma/sub-08_wide.bmp"] == 0).mean() > 0.5
    # One NaN and one inf pixel do not black out a float TIFF: it is scaled over its finite values.
    ramp = decoded["glioma/sub-20_float_nan.tif"]
    assert ramp.max() >= 250 and len(np.unique(ramp)) > 20
    assert any("empty class folder" in note and "meningioma" in note for note in report["notes"])


def os_is_root() -> bool:
    import os

    return os.geteuid() == 0


def test_aspect_ratio_is_kept_by_padding(tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    Image.new("L", (80, 40), 255).save(path)
    out = decode_image(path, 40)
    assert out[0].max() == 0 and out[-1].max() == 0  # padded rows above and below
    assert out[20].min() == 255


def test_subject_ids_auto_detected_and_split_level(tmp_path: Path, cache: Path) -> None:
    for name in ("OAS1_0028_MR1_mpr-1_100.jpg", "OAS1_0028_MR1_mpr-1_101.jpg", "OAS1_0031_MR1_mpr-2_100.jpg"):
        (tmp_path / "d" / "Non Demented").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (496, 248), (90, 90, 90)).save(tmp_path / "d" / "Non Demented" / name)
    manifest, _ = build_manifest(tmp_path / "d", 32, cache_root=cache)
    assert manifest.subject_pattern == "oasis" and manifest.split_level == "subject"
    assert {r.subject for r in manifest.usable} == {"OAS1_0028", "OAS1_0031"}
    assert {(r.width, r.height) for r in manifest.usable} == {(496, 248)}


def test_no_subject_ids_means_image_level(tmp_path: Path, cache: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "Tr-gl_0010.jpg").write_bytes(png_bytes())
    manifest, _ = build_manifest(tmp_path, 32, cache_root=cache)
    assert manifest.split_level == "image" and manifest.check_summary()["subjects"] is None


def test_given_split_folders_and_class_map(tmp_path: Path, cache: Path) -> None:
    for split in ("Training", "Testing"):
        for cls in ("glioma", "meningioma", "notumor"):
            (tmp_path / split / cls).mkdir(parents=True)
            (tmp_path / split / cls / f"x-{split}-{cls}.png").write_bytes(png_bytes(value=len(cls) * 9 + len(split)))
    manifest, _ = build_manifest(tmp_path, 32, class_map={"glioma": "tumour", "meningioma": "tumour"}, cache_root=cache)
    assert manifest.classes == ["notumor", "tumour"]
    assert {r.given_split for r in manifest.usable} == {"train", "test"}
    assert {r.folder_label for r in manifest.usable if r.label == "tumour"} == {"glioma", "meningioma"}


def test_nifti_volumes_are_sliced(tmp_path: Path, cache: Path) -> None:
    vol = np.zeros((24, 24, 10), dtype=np.float32)
    vol[4:20, 4:20, 2:8] = np.random.default_rng(0).random((16, 16, 6)) + 1  # slices 2..7 hold anatomy
    vol[5, 5, 3] = np.nan
    (tmp_path / "ms" / "lesion").mkdir(parents=True)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "ms" / "lesion" / "sub-07_T1w.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4, 3), np.float32), np.eye(4)), tmp_path / "ms" / "lesion" / "sub-08_bold.nii")
    nib.save(nib.Nifti1Image(np.full((8, 8, 4), np.nan, np.float32), np.eye(4)), tmp_path / "ms" / "lesion" / "sub-09_T1w.nii")
    manifest, images = build_manifest(tmp_path / "ms", 32, cache_root=cache)
    slices = [r for r in manifest.usable if r.subject == "sub-07"]
    assert sorted(r.slice_index for r in slices) == list(range(2, 8))
    assert len(images) == 6
    # Every slice holds its anatomy, the one with a NaN voxel too (a NaN must not blank a slice or the volume).
    assert images.reshape(6, -1).max(axis=1).min() > 200 and (images.reshape(6, -1) > 0).mean(axis=1).min() > 0.2
    assert len({img.tobytes() for img in images}) == 6  # six different slices, not one repeated
    reasons = {Path(u["path"]).name: u["reason"] for u in manifest.check_summary()["unusable"]}
    assert "4-D" in reasons["sub-08_bold.nii"] and "empty" in reasons["sub-09_T1w.nii"]
    summary = manifest.check_summary()
    assert summary["files"] == 3 and summary["usable"] == 1 and summary["images"] == 6


def test_cache_is_reused_and_only_changed_files_are_decoded(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "d"
    for i in range(4):
        (root / "c").mkdir(parents=True, exist_ok=True)
        (root / "c" / f"sub-{i}.png").write_bytes(png_bytes(value=40 * i + 10))
    first, images = build_manifest(root, 32, cache_root=cache)
    decoded: list[str] = []
    real = ingest.process_file
    monkeypatch.setattr(ingest, "process_file", lambda job: decoded.append(job[0]) or real(job))
    again, images_again = build_manifest(root, 32, cache_root=cache)
    assert decoded == [] and np.array_equal(images, images_again) and again.fingerprint() == first.fingerprint()
    (root / "c" / "sub-2.png").write_bytes(png_bytes(value=250))
    changed, images_changed = build_manifest(root, 32, cache_root=cache)
    assert decoded == [str((root / "c" / "sub-2.png").absolute())]
    assert changed.fingerprint() != first.fingerprint() and not np.array_equal(images, images_changed)


def test_a_file_replaced_with_its_old_size_and_mtime_is_decoded_again(tmp_path: Path, cache: Path) -> None:
    """``cp -p`` / ``rsync -a`` keep size and mtime: the cache must notice the new ctime (and inode)."""
    root = tmp_path / "d"
    (root / "c").mkdir(parents=True)
    for i in range(2):
        (root / "c" / f"sub-{i}.png").write_bytes(png_bytes(value=40 * i + 10))
    target = root / "c" / "sub-1.png"
    _, before = build_manifest(root, 32, cache_root=cache)
    old = target.stat()
    replacement = png_bytes(value=200)
    assert len(replacement) == old.st_size  # same byte count, other pixels
    target.write_bytes(replacement)
    os.utime(target, ns=(old.st_atime_ns, old.st_mtime_ns))  # what cp -p does
    assert (target.stat().st_size, target.stat().st_mtime_ns) == (old.st_size, old.st_mtime_ns)
    _, after = build_manifest(root, 32, cache_root=cache)
    assert np.array_equal(before[0], after[0]) and not np.array_equal(before[1], after[1])


def test_a_nifti_bomb_is_refused_from_its_header(tmp_path: Path, cache: Path) -> None:
    """A few hundred compressed bytes claiming 120 M voxels: refused before any voxel is decompressed."""
    (tmp_path / "ms" / "lesion").mkdir(parents=True)
    nifti_bomb(tmp_path / "ms" / "lesion" / "sub-01_bomb.nii.gz")
    (tmp_path / "ms" / "lesion" / "sub-02.png").write_bytes(png_bytes())
    manifest, _ = build_manifest(tmp_path / "ms", 32, cache_root=cache)
    reasons = {Path(u["path"]).name: u["reason"] for u in manifest.check_summary()["unusable"]}
    assert "volume too large (2000x2000x30 voxels" in reasons["sub-01_bomb.nii.gz"]


def test_a_decoder_process_that_dies_loses_one_file_not_the_command(
        tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "d" / "c"
    root.mkdir(parents=True)
    for i in range(ingest.INLINE_BELOW + 6):
        (root / f"sub-{i:03d}.png").write_bytes(png_bytes(value=i + 10))
    (root / "sub-999_crash.png").write_bytes(png_bytes())
    monkeypatch.setattr(ingest, "process_file", crash_on)
    manifest, images = build_manifest(root.parent, 32, cache_root=cache, workers=2)
    report = manifest.check_summary()
    assert report["usable"] == ingest.INLINE_BELOW + 6 == len(images)
    assert [(Path(u["path"]).name, u["reason"]) for u in report["unusable"]] == [
        ("sub-999_crash.png", ingest.WORKER_DIED)]


def test_missing_folder_and_nothing_usable(tmp_path: Path, cache: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        build_manifest(tmp_path / "missing", 32, cache_root=cache)


def test_data_check_cli_reports_and_exits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSLMRI_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "data"
    usable = sum(reason is None for reason in write_corpus(root).values())
    export = tmp_path / "manifest.csv"
    result = CliRunner().invoke(app, ["data", "check", str(root), "--json", "--export", str(export),
                                      "--db", f"sqlite:///{tmp_path / 'r.db'}"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["files"] == report["usable"] + len(report["unusable"]) and report["usable"] == usable
    assert report["split_level"] == "subject" and report["subjects"] == usable  # one subject per usable file
    assert export.read_text().count("\n") >= report["files"]

    empty = tmp_path / "nothing"
    (empty / "a").mkdir(parents=True)
    (empty / "a" / "x.png").write_bytes(b"junk")
    result = CliRunner().invoke(app, ["data", "check", str(empty), "--json", "--db", f"sqlite:///{tmp_path / 'r.db'}"])
    assert result.exit_code == 2 and "no usable" in result.stderr  # input the user can fix (README: exit 2)


def test_manifest_exports_to_csv_and_parquet(tmp_path: Path, cache: Path) -> None:
    import pandas as pd

    root = tmp_path / "d"
    write_corpus(root)
    manifest, _ = build_manifest(root, 32, cache_root=cache)
    for name, reader in (("m.csv", pd.read_csv), ("m.parquet", pd.read_parquet)):
        frame = reader(manifest.export(tmp_path / name))
        assert len(frame) == len(manifest.rows)
        assert {"key", "path", "label", "subject", "content_hash", "status", "reason"} <= set(frame.columns)
    with pytest.raises(ValueError, match="--export"):
        manifest.export(tmp_path / "m.xlsx")
