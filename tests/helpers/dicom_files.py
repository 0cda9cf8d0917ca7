"""DICOM files made in the test (never shipped): PNG class folders converted to single-frame MR series,
and single datasets with chosen headers. Every file carries a fake patient name and birth date, so a
test can check that neither ever leaves the data layer."""

from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

PATIENT_NAME = "Doe^Jane"
BIRTH_DATE = "19700101"
MRN_PREFIX = "MRN-"
OBLIQUE = (0.8, 0.6, 0.0, 0.0, 0.0, 1.0)  # row and column direction cosines: slice normal (0.6, -0.8, 0)
SPACING = 1.5  # mm between slices


def normal(orientation: tuple[float, ...] = OBLIQUE) -> np.ndarray:
    return np.cross(np.asarray(orientation[:3]), np.asarray(orientation[3:]))


def dataset(pixels: np.ndarray, *, patient: str | None = "MRN-1", series: str | None = None,
            position: float | None = None, instance: int | None = None, bits: int | None = None,
            signed: bool = False, slope: float | None = None, intercept: float | None = None,
            photometric: str = "MONOCHROME2", transfer_syntax: str = ExplicitVRLittleEndian,
            orientation: tuple[float, ...] = OBLIQUE) -> Dataset:
    """An MR image dataset of ``pixels`` (``(rows, cols)`` or ``(frames, rows, cols)``, uint8/uint16/int16).

    ``position``: the slice's distance along the normal of ``orientation`` (ImagePositionPatient is
    set off-axis so only its projection orders slices).
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.PatientName = PATIENT_NAME
    ds.PatientBirthDate = BIRTH_DATE
    if patient is not None:
        ds.PatientID = patient
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    if instance is not None:
        ds.InstanceNumber = instance
    if position is not None:
        # in-plane offsets (along the row and column directions) change nothing along the normal
        along = position * normal(orientation) + 7.0 * np.asarray(orientation[:3]) - 3.0 * np.asarray(orientation[3:])
        ds.ImagePositionPatient = [round(float(v), 6) for v in along]
        ds.ImageOrientationPatient = list(orientation)
    if slope is not None:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept or 0.0
    frames = pixels.shape[0] if pixels.ndim == 3 else None
    if frames:
        ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    allocated = pixels.dtype.itemsize * 8
    ds.BitsAllocated = allocated
    ds.BitsStored = bits or allocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds


def save(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def dicom_bytes(ds: Dataset) -> bytes:
    import io

    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _subject_and_slice(name: str) -> tuple[str, int]:
    match = re.search(r"(sub-[A-Za-z0-9]+)", name)
    assert match, name
    return match.group(1), int(re.findall(r"\d+", Path(name).stem)[-1])


def png_tree_to_dicom(src: Path, dst: Path, seed: int = 0) -> dict[Path, Path]:
    """Every ``sub-*`` PNG (not masks) under ``src`` as a single-frame 8-bit MR DICOM under ``dst``,
    same folders; returns ``{png: dicom}``.

    One subject is one patient (PatientID ``MRN-<subject>``) and one series. Files are named
    ``im<subject ordinal><letter>`` with the letters in a shuffled order within the subject (odd ones
    with ``.dcm``): the slice order is only in ImagePositionPatient (along an oblique normal,
    ``SPACING`` x the PNG's slice number), and InstanceNumber counts slices in order.
    """
    rng = random.Random(seed)
    mapping: dict[Path, Path] = {}
    for folder in sorted({p.parent for p in src.rglob("*.png")}):
        pngs = sorted(p for p in folder.glob("*.png") if not p.stem.endswith("_mask"))
        subjects: dict[str, list[tuple[int, Path]]] = {}
        for png in pngs:
            subject, z = _subject_and_slice(png.name)
            subjects.setdefault(subject, []).append((z, png))
        for ordinal, (subject, slices) in enumerate(sorted(subjects.items())):
            slices.sort()
            letters = [chr(ord("a") + i) for i in range(len(slices))]
            while len(letters) > 1 and letters == sorted(letters):  # shuffled: never the slice order
                rng.shuffle(letters)
            series = generate_uid()
            for instance, ((z, png), letter) in enumerate(zip(slices, letters, strict=True), start=1):
                pixels = np.asarray(Image.open(png).convert("L"), dtype=np.uint8)
                name = f"im{ordinal:03d}{letter}" + (".dcm" if instance % 2 else "")
                target = dst / folder.relative_to(src) / name
                save(dataset(pixels, patient=MRN_PREFIX + subject, series=series, position=SPACING * z,
                             instance=instance), target)
                mapping[png] = target
    return mapping
