"""DICOM input: a DICOM copy of a PNG folder is the same data set (pixels, labels, subjects, split and
metrics), slices are ordered by position, unusable files say why, and no patient identifier ever
leaves the data layer. Every DICOM file is made here (tests/helpers/dicom_files.py)."""

from __future__ import annotations

import io
import os
import re
import shutil
import sqlite3
import zipfile
from pathlib import Path

import numpy as np
import pytest
from dicom_files import BIRTH_DATE, MRN_PREFIX, PATIENT_NAME, dataset, dicom_bytes, png_tree_to_dicom, save
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, generate_uid
from typer.testing import CliRunner

import sslmri_core.data.dicom as dicom
from cli import app
from sslmri_core.data.decode import DecodeError, decode_image_bytes
from sslmri_core.data.ingest import build_manifest
from sslmri_core.data.manifest import Manifest
from sslmri_core.data.scans import read_scan
from sslmri_core.data.sources import slice_position

SECRETS = (PATIENT_NAME, "Jane", BIRTH_DATE, MRN_PREFIX)
TINY = ["--model", "test_resnet", "--image-size", "64", "--min-steps", "2", "--epochs", "1", "--batch-size", "8",
        "--precision", "fp32", "--seed", "3", "--no-progress"]


def _leaks(text: str | bytes) -> list[str]:
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    return [s for s in SECRETS if s in text]


def _manifest(root: Path, cache: Path, size: int = 64) -> tuple[Manifest, np.ndarray]:
    return build_manifest(root, size, cache_root=cache, workers=1)


def _reasons(manifest: Manifest) -> dict[str, str]:
    return {Path(r.path).name: r.reason or "" for r in manifest.unusable}


def test_a_dicom_copy_decodes_exactly_like_its_png_folder(synth_tumor: Path, tmp_path: Path) -> None:
    mapping = png_tree_to_dicom(synth_tumor, tmp_path / "dicom")
    png, png_images = _manifest(synth_tumor, tmp_path / "cache")
    dcm, dcm_images = _manifest(tmp_path / "dicom", tmp_path / "cache")
    assert not dcm.unusable and len(dcm.usable) == len(png.usable) == len(mapping) == 40
    png_rows = {Path(r.path): (r, img) for r, img in zip(png.usable, png_images, strict=True)}
    dcm_rows = {Path(r.path): (r, img) for r, img in zip(dcm.usable, dcm_images, strict=True)}
    subject_of: dict[str, str] = {}
    for png_path, dcm_path in mapping.items():
        (p, p_img), (d, d_img) = png_rows[png_path], dcm_rows[dcm_path]
        assert d.label == p.label and d.mode == "dicom:MONOCHROME2" and d.slice_index is None
        np.testing.assert_array_equal(d_img, p_img, err_msg=str(dcm_path))
        assert subject_of.setdefault(p.subject, d.subject) == d.subject  # one PNG subject -> one DICOM subject
        assert d.subject.startswith("pt-") and p.subject not in d.subject
    assert len(set(subject_of.values())) == len(subject_of) == 20  # ... and back: a bijection
    assert dcm.split_level == "subject" and dcm.subject_pattern == "dicom-patient-id"
    # The rows of a series come in position order (names are shuffled), in the PNG folder's order.
    assert [mapping[Path(r.path)] for r in png.usable] == [Path(r.path) for r in dcm.usable]
    for subject in subject_of.values():
        rows = [r for r in dcm.usable if r.subject == subject]
        assert len({r.series for r in rows}) == 1 and rows[0].series
        assert [r.position for r in rows] == sorted(r.position for r in rows)
        assert sorted(Path(r.path).name for r in rows) != [Path(r.path).name for r in rows]
    assert [r.position for r in png.usable][:2] == [66.0, 78.0]  # the last number in a PNG's name
    assert not _leaks(dcm.to_frame().to_csv())
    runner = CliRunner()
    reports = [runner.invoke(app, ["data", "check", str(root), "--json"]) for root in (synth_tumor, tmp_path / "dicom")]
    assert all(r.exit_code == 0 for r in reports), reports[1].output
    import json

    png_check, dcm_check = (json.loads(r.stdout.strip().splitlines()[-1]) for r in reports)
    for key in ("files", "usable", "images", "classes", "subjects", "split_level"):
        assert png_check[key] == dcm_check[key], key
    assert not _leaks(reports[1].output)


def _given_split_copy(src: Path, dst: Path) -> Path:
    """The PNGs (no masks) under Training/Validation/Testing by subject: the split is fixed by the folders."""
    for cls in sorted(p for p in src.iterdir() if p.is_dir()):
        subjects = sorted({p.name.split("_")[0] for p in cls.glob("*.png")})
        for png in cls.glob("*.png"):
            if png.stem.endswith("_mask"):
                continue
            i = subjects.index(png.name.split("_")[0])
            split = "Training" if i < 3 else "Validation" if i == 3 else "Testing"
            (dst / split / cls.name).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(png, dst / split / cls.name / png.name)
    return dst


def _run(args: list[str]) -> tuple[dict, str]:
    import json

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1]), result.output


@pytest.mark.slow  # two fine-tuning runs, an evaluation and Grad-CAM: ~20 s
def test_finetune_on_a_dicom_copy_has_the_same_split_and_metrics_and_no_identifier_anywhere(
    synth_tumor: Path, tmp_path: Path
) -> None:
    png_root = _given_split_copy(synth_tumor, tmp_path / "png")
    png_tree_to_dicom(png_root, tmp_path / "dicom")
    results, consoles = {}, []
    for name in ("png", "dicom"):
        db = f"sqlite:///{tmp_path / f'{name}.db'}"
        results[name], console = _run(["finetune", "--data", str(tmp_path / name), "--init", "scratch",
                                       "--use-given-split", *TINY, "--db", db, "--out", str(tmp_path / f"runs-{name}"),
                                       "--json"])
        consoles.append(console)
    png_metrics, dcm_metrics = results["png"]["metrics"], results["dicom"]["metrics"]
    assert png_metrics == dcm_metrics and "test_accuracy" in dcm_metrics
    db = f"sqlite:///{tmp_path / 'dicom.db'}"
    run = str(results["dicom"]["run_id"])
    evaluated, console = _run(["evaluate", "--run", run, "--data", str(tmp_path / "dicom" / "Testing"),
                               "--db", db, "--json"])
    consoles.append(console)
    assert evaluated["run_id"]
    explained, console = _run(["gradcam", "--run", run, "--limit", "2", "--no-progress", "--db", db,
                               "--out", str(tmp_path / "runs-dicom"), "--json"])
    consoles.append(console)
    assert explained["scans"] == 2
    dump = "\n".join(sqlite3.connect(tmp_path / "dicom.db").iterdump())
    assert "pt-" in dump and "dicom:MONOCHROME2" in dump  # the rows are there, hashed
    assert not _leaks(dump)
    files = [p for p in (tmp_path / "runs-dicom").rglob("*") if p.is_file()]
    assert files and not {str(p): _leaks(p.read_bytes()) for p in files if _leaks(p.read_bytes())}
    assert not _leaks("\n".join(consoles))


def test_slices_are_ordered_by_position_along_the_normal_else_by_instance_number(tmp_path: Path) -> None:
    pixels = [np.full((16, 16), 20 * (i + 1), dtype=np.uint8) for i in range(5)]
    along = [-12.5, -3.0, 0.0, 4.25, 30.0]  # uneven spacing along an oblique normal
    names = ["zz", "b.dcm", "x17", "a", "m.dcm"]  # no name order, no useful number
    series = generate_uid()
    for name, pos, px in zip(names, along, pixels, strict=True):
        save(dataset(px, series=series, position=pos), tmp_path / "pos" / "scan" / name)
    instances = [3, 1, 5, 2, 4]
    for name, inst, px in zip(names, instances, pixels, strict=True):
        save(dataset(px, series=series, instance=inst), tmp_path / "inst" / "scan" / name)
    manifest, images = _manifest(tmp_path / "pos", tmp_path / "cache")
    assert [r.position for r in manifest.usable] == pytest.approx(along)
    assert [int(img.max()) for img in images] == [20, 40, 60, 80, 100]
    manifest, images = _manifest(tmp_path / "inst", tmp_path / "cache")
    assert [r.position for r in manifest.usable] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert [Path(r.path).name for r in manifest.usable] == ["b.dcm", "a", "zz", "m.dcm", "x17"]
    assert slice_position("x/slice_012.png", None) == 12.0 and slice_position("x/scan.png", None) is None
    assert slice_position("v.nii.gz", 7) == 7.0 and slice_position("f.dcm", 7, -2.5) == -2.5


def test_rescale_is_applied_and_monochrome1_is_inverted(tmp_path: Path) -> None:
    raw = (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 37 % 4000 + 100).astype(np.uint16)
    png16 = io.BytesIO()
    Image.fromarray(raw).save(png16, "PNG")
    as_png = decode_image_bytes(png16.getvalue(), 32, suffix=".png")[0]
    scan = dicom.decode_dicom_bytes(dicom_bytes(dataset(raw, slope=2.0, intercept=-100.0)), 32)
    np.testing.assert_array_equal(scan.frames[0][1], as_png)  # min-max of 2*raw-100: the 16-bit PNG path
    flipped = dicom.decode_dicom_bytes(dicom_bytes(dataset(raw, slope=-1.0, intercept=0.0)), 32)
    inverted_png = io.BytesIO()
    mirrored = (int(raw.max()) + int(raw.min()) - raw.astype(np.int64)).astype(np.uint16)
    Image.fromarray(mirrored).save(inverted_png, "PNG")
    expected_inverted = decode_image_bytes(inverted_png.getvalue(), 32, suffix=".png")[0]
    np.testing.assert_array_equal(flipped.frames[0][1], expected_inverted)  # a negative slope inverts
    mono1 = dicom.decode_dicom_bytes(dicom_bytes(dataset(raw, photometric="MONOCHROME1")), 32)
    np.testing.assert_array_equal(mono1.frames[0][1], expected_inverted)
    small = (np.arange(32 * 32).reshape(32, 32) % 90 + 10).astype(np.uint8)
    plain = dicom.decode_dicom_bytes(dicom_bytes(dataset(small)), 32).frames[0][1]
    np.testing.assert_array_equal(plain, small)  # 8 bits, no rescale: used as is
    assert dicom.decode_dicom_bytes(dicom_bytes(dataset(small, slope=2.0)), 32).frames[0][1].max() == 255
    np.testing.assert_array_equal(
        dicom.decode_dicom_bytes(dicom_bytes(dataset(small, photometric="MONOCHROME1")), 32).frames[0][1], 255 - small)


def _compressed(transfer_syntax: str) -> Dataset:
    ds = dataset(np.zeros((16, 16), dtype=np.uint8), transfer_syntax=transfer_syntax)
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\0" * 60])
    ds["PixelData"].VR = "OB"
    return ds


def test_unusable_dicom_files_say_why_and_quote_no_header(tmp_path: Path) -> None:
    from pydicom.pixels import get_decoder

    root = tmp_path / "data" / "scan"
    good = dicom_bytes(dataset(np.zeros((16, 16), dtype=np.uint8)))
    no_pixels = dataset(np.zeros((16, 16), dtype=np.uint8))
    del no_pixels.PixelData
    huge = dataset(np.zeros((16, 16), dtype=np.uint8))
    huge.Rows = huge.Columns = 60_000
    many = dataset(np.zeros((16, 16), dtype=np.uint16))
    many.Rows = many.Columns = 512
    many.NumberOfFrames = 5_000
    files = {
        "jpegls.dcm": dicom_bytes(_compressed(JPEGLSLossless)),
        "j2k": dicom_bytes(_compressed(JPEG2000Lossless)),
        "report": dicom_bytes(no_pixels),
        "truncated.dcm": good[: len(good) - 40],
        "header-only.dcm": good[:300],
        "huge": dicom_bytes(huge),
        "frames.dcm": dicom_bytes(many),
        "notes": b"just text, no DICOM marker" * 10,
        "fake.dcm": b"\0" * 200,
    }
    root.mkdir(parents=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
    manifest, _ = _manifest(tmp_path / "data", tmp_path / "cache")
    reasons = _reasons(manifest)
    assert set(reasons) == set(files) and not manifest.usable
    if not get_decoder(JPEGLSLossless).is_available:  # a pylibjpeg/gdcm install would decode it
        assert reasons["jpegls.dcm"] == ("compressed with JPEG-LS Lossless Image Compression; pydicom cannot decode it "
                                         "without a plugin (pylibjpeg/gdcm)")
    assert "cannot decode the pixel data (JPEG 2000" in reasons["j2k"]
    assert "without pixel data" in reasons["report"] and "without pixel data" in reasons["header-only.dcm"]
    assert reasons["truncated.dcm"].startswith("truncated DICOM file")
    assert "image too large (60000x60000, header)" in reasons["huge"]
    assert "volume too large (5000x512x512" in reasons["frames.dcm"]
    assert reasons["notes"] == "not an image file type (no extension)"
    assert "no 'DICM' marker" in reasons["fake.dcm"]
    assert not _leaks("\n".join(reasons.values()))


def test_multi_frame_files_give_one_row_per_frame_and_read_scan_matches(tmp_path: Path) -> None:
    frames = np.stack([np.full((20, 20), 30 * (k + 1), dtype=np.uint8) for k in range(3)])
    ds = dataset(frames)
    # Enhanced-MR style per-frame positions, in reverse frame order along the normal
    per_frame = []
    for k in range(3):
        plane, group = Dataset(), Dataset()
        plane.ImagePositionPatient = [0.0, 0.0, float(10 - 4 * k)]
        group.PlanePositionSequence = [plane]
        per_frame.append(group)
    orient, shared = Dataset(), Dataset()
    orient.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    shared.PlaneOrientationSequence = [orient]
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.SharedFunctionalGroupsSequence = [shared]
    path = save(ds, tmp_path / "data" / "cine" / "volume")
    save(dataset(frames), tmp_path / "data" / "plain" / "noplanes.dcm")
    Image.fromarray(frames[0]).save(tmp_path / "data" / "plain" / "slice_004.png")
    manifest, images = _manifest(tmp_path / "data", tmp_path / "cache", size=32)
    rows = [r for r in manifest.usable if r.path == str(path.absolute())]
    assert [r.key for r in rows] == [f"{path.absolute()}#z={k}" for k in (2, 1, 0)]  # by position, not frame
    assert [r.position for r in rows] == [2.0, 6.0, 10.0]
    plain = [r for r in manifest.usable if r.path.endswith("noplanes.dcm")]
    assert [r.slice_index for r in plain] == [r.position for r in plain] == [0, 1, 2]
    for row, image in zip(manifest.usable, images, strict=True):
        np.testing.assert_array_equal(read_scan(row.key, 32), image, err_msg=row.key)
    with pytest.raises(DecodeError, match="multi-frame"):
        read_scan(str(path), 32)
    with pytest.raises(DecodeError, match="no frame 7"):
        read_scan(f"{path}#z=7", 32)


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_uploads_of_a_file_or_a_zipped_series_decode_in_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    series = generate_uid()
    slices = {f"IMG{i:04d}": dicom_bytes(dataset(np.full((16, 16), 40 * i + 10, dtype=np.uint8), series=series,
                                                 position=[5.0, -2.0, 9.5, 0.0][i])) for i in range(4)}
    one = dicom.decode_dicom_upload(slices["IMG0000"], 16)
    assert [k for k, _ in one] == [0] and one[0][1].max() == 10
    ordered = dicom.decode_dicom_upload(_zip({"series/" + n: d for n, d in slices.items()} | {"README.txt": b"hi"}), 16)
    assert [int(img.max()) for _, img in ordered] == [50, 130, 10, 90] and [k for k, _ in ordered] == [0, 1, 2, 3]
    other = dicom_bytes(dataset(np.zeros((16, 16), dtype=np.uint8), series=generate_uid()))
    with pytest.raises(DecodeError, match="holds 2 series; upload one"):
        dicom.decode_dicom_upload(_zip({**slices, "other": other}), 16)
    with pytest.raises(DecodeError, match="not a DICOM file"):
        dicom.decode_dicom_upload(b"\x89PNG\r\n\x1a\n" + b"\0" * 300, 16)
    with pytest.raises(DecodeError, match="no DICOM file"):
        dicom.decode_dicom_upload(_zip({"a.txt": b"text"}), 16)
    monkeypatch.setattr(dicom, "MAX_ZIP_BYTES", 1 << 20)
    with pytest.raises(DecodeError, match="zip bomb"):
        dicom.decode_dicom_upload(_zip({"bomb.dcm": b"\0" * (2 << 20)}), 16)  # 2 MiB of zeros in ~2 kB
    monkeypatch.setattr(dicom, "MAX_ZIP_MEMBERS", 3)
    with pytest.raises(DecodeError, match="holds 4 files"):
        dicom.decode_dicom_upload(_zip(slices), 16)


def test_the_salt_renames_subjects_and_no_patient_id_reaches_the_cache(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data"
    for subject in range(3):
        for z in range(2):
            px = np.full((16, 16), 50 + 10 * subject + z, dtype=np.uint8)
            save(dataset(px, patient=f"{MRN_PREFIX}{subject}", position=float(z)), root / "cls" / f"s{subject}{z}")
    cache = tmp_path / "cache"
    subjects: dict[str, list[list[str | None]]] = {}
    fingerprints: dict[str, set[str]] = {}
    for salt in ("team-a", "team-b", "team-a"):
        monkeypatch.setenv(dicom.SALT_ENV, salt)
        manifest, _ = _manifest(root, cache)
        subjects.setdefault(salt, []).append([r.subject for r in manifest.usable])
        fingerprints.setdefault(salt, set()).add(manifest.fingerprint())
    assert subjects["team-a"][0] == subjects["team-a"][1]  # one salt, one id (a shared store agrees)
    a, b = subjects["team-a"][0], subjects["team-b"][0]
    assert not set(a) & set(b)  # the cache kept no stale hash
    assert len(fingerprints["team-a"]) == len(fingerprints["team-b"]) == 1 != len(set.union(*fingerprints.values()))
    assert [a.index(s) for s in a] == [b.index(s) for s in b]  # the same partition into subjects
    monkeypatch.delenv(dicom.SALT_ENV)
    monkeypatch.setenv("SSLMRI_CACHE", str(tmp_path / "home-cache"))
    manifest, _ = _manifest(root, cache)
    salt_file = tmp_path / "home-cache" / "subject_salt"
    assert salt_file.stat().st_mode & 0o777 == 0o600 and len(salt_file.read_text()) >= 32
    assert not {r.subject for r in manifest.usable} & (set(a) | set(b))
    for path in cache.rglob("*"):
        if path.is_file():
            assert not _leaks(path.read_bytes()), path
    assert re.fullmatch(r"pt-[0-9a-f]{12}", manifest.usable[0].subject or "")
    assert os.environ.get(dicom.SALT_ENV) is None


def test_without_patient_id_the_file_name_gives_the_subject_and_rgb_is_made_grey(tmp_path: Path) -> None:
    root = tmp_path / "data" / "cls"
    px = (np.arange(16 * 16).reshape(16, 16) % 200).astype(np.uint8)
    save(dataset(px, patient=None), root / "sub-07_a.dcm")
    save(dataset(px, patient="MRN-9"), root / "sub-08_a.dcm")
    rgb = dataset(px, patient=None)
    colour = np.stack([px, 255 - px, px // 2], axis=-1)
    rgb.SamplesPerPixel, rgb.PhotometricInterpretation, rgb.PlanarConfiguration = 3, "RGB", 0
    rgb.PixelData = colour.tobytes()
    save(rgb, root / "sub-09_rgb.dcm")
    palette = dataset(px, patient=None, photometric="PALETTE COLOR")
    save(palette, root / "sub-10_palette.dcm")
    manifest, images = _manifest(tmp_path / "data", tmp_path / "cache", size=16)
    subjects = {Path(r.path).name: r.subject for r in manifest.usable}
    assert subjects["sub-07_a.dcm"] == "sub-07" and subjects["sub-09_rgb.dcm"] == "sub-09"
    assert (subjects["sub-08_a.dcm"] or "").startswith("pt-")  # the header's (hashed) id wins over the name
    assert manifest.subject_pattern == "bids+dicom-patient-id"
    grey = np.asarray(Image.fromarray(colour).convert("L"))
    np.testing.assert_array_equal(images[[Path(r.path).name for r in manifest.usable].index("sub-09_rgb.dcm")], grey)
    assert _reasons(manifest)["sub-10_palette.dcm"] == ("PALETTE COLOR DICOM images with 1 sample(s) per pixel "
                                                        "are not supported")
