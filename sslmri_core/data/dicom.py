"""DICOM slices: single- and multi-frame files decoded like PNGs, positions, salted subject ids.

Only these header elements are ever read (``dcmread(..., specific_tags=READ_TAGS)``; every other
element, the patient's name and birth date included, is skipped unparsed):

* pixel module: PixelData, Rows, Columns, NumberOfFrames, SamplesPerPixel, PhotometricInterpretation,
  PlanarConfiguration, BitsAllocated, BitsStored, HighBit, PixelRepresentation, and the
  ExtendedOffsetTable(Lengths) of compressed multi-frame data;
* RescaleSlope, RescaleIntercept (the modality rescale, applied before scaling to 8 bits);
* ImagePositionPatient, ImageOrientationPatient, InstanceNumber, and for multi-frame files the
  per-frame and shared functional groups (plane position and orientation of each frame): the order
  of the slices;
* SeriesInstanceUID and PatientID: kept only as salted HMAC-SHA256 hashes (:func:`hash_identifier`),
  never stored, logged or put in a message;
* the file meta's TransferSyntaxUID (can the pixels be decoded without a plugin?).

No header value is ever printed: a reason quotes sizes, the transfer syntax name and exception
class names only. pydicom's own validation warnings and log lines (which may quote values) are
silenced.

The salt is ``$SSLMRI_SUBJECT_SALT`` (a team sharing one run store sets the same one, so one
patient has one id for all of them) or a random secret created once, readable by its owner only,
at ``<cache dir>/subject_salt``.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import os
import re
import secrets
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sslmri_core.data.decode import (
    DecodeError,
    Facts,
    check_image_size,
    check_volume_size,
    square_resize,
    to_gray,
)

DICOM_SUFFIXES = (".dcm", ".dicom")
MAGIC_OFFSET = 128  # "DICM" follows the 128-byte preamble of a DICOM file
MAGIC = b"DICM"
SALT_ENV = "SSLMRI_SUBJECT_SALT"
SUBJECT_PREFIX = "pt-"
HASH_HEX = 12  # 48 bits: no collision among any realistic number of patients or series
READ_TAGS = [
    "PixelData", "Rows", "Columns", "NumberOfFrames", "SamplesPerPixel", "PhotometricInterpretation",
    "PlanarConfiguration", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
    "ExtendedOffsetTable", "ExtendedOffsetTableLengths", "RescaleSlope", "RescaleIntercept",
    "ImagePositionPatient", "ImageOrientationPatient", "InstanceNumber",
    "PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence", "SeriesInstanceUID", "PatientID",
]
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")  # pydicom returns these as RGB
SUPPORTED = {(1, "MONOCHROME1"), (1, "MONOCHROME2"), *((3, c) for c in COLOUR)}
PHOTOMETRIC = {"PALETTE COLOR", "YBR_PARTIAL_422", "YBR_PARTIAL_420", "HSV", "ARGB", "CMYK",
               *(p for _, p in SUPPORTED)}  # the standard's terms: the only ones a reason may quote
# Uploads: a zip is read in memory, member by member, under these caps (a zip bomb is refused).
MAX_ZIP_MEMBERS = 2_000
MAX_ZIP_BYTES = 512 << 20

NO_PIXELS = "DICOM file without pixel data (not an image: a DICOMDIR, a report or other object, or a truncated file)"

logging.getLogger("pydicom").propagate = False  # its log lines may quote header values


def has_magic(head: bytes) -> bool:
    """Whether file bytes (at least the first 132) carry the DICOM ``DICM`` marker."""
    return head[MAGIC_OFFSET:MAGIC_OFFSET + len(MAGIC)] == MAGIC


def is_dicom_file(path: str | Path) -> bool:
    """A ``.dcm``/``.dicom`` name, or the ``DICM`` marker at byte 128 (files of any name)."""
    if str(path).lower().endswith(DICOM_SUFFIXES):
        return True
    try:
        with open(path, "rb") as fh:
            return has_magic(fh.read(MAGIC_OFFSET + len(MAGIC)))
    except OSError:
        return False


# -- salted hashes -----------------------------------------------------------------------------
_FILE_SALTS: dict[str, bytes] = {}


def subject_salt() -> bytes:
    """``$SSLMRI_SUBJECT_SALT``, else the secret at ``<cache dir>/subject_salt`` (created once, mode 0600)."""
    env = os.environ.get(SALT_ENV)
    if env:
        return env.encode()
    from sslmri_core.data.builtin import cache_dir

    path = cache_dir() / "subject_salt"
    if str(path) in _FILE_SALTS:
        return _FILE_SALTS[str(path)]
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".subject_salt.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
        try:
            os.link(tmp, path)  # atomic create-if-absent: two first runs at once agree on one salt
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    salt = path.read_text().strip().encode()
    if not salt:
        raise DecodeError(f"the subject salt file {path} is empty: delete it (a new one is made) or set {SALT_ENV}")
    _FILE_SALTS[str(path)] = salt
    return salt


def salt_id() -> str:
    """A short fingerprint of the salt: cached hashes made with another salt are computed again."""
    return hashlib.sha256(b"sslmri-salt-id\0" + subject_salt()).hexdigest()[:8]


def hash_identifier(value: str, kind: str, salt: bytes) -> str:
    """Salted HMAC-SHA256 of a header identifier, short hex (``kind`` keeps patients and series apart)."""
    return hmac.new(salt, f"{kind}\0{value}".encode(), hashlib.sha256).hexdigest()[:HASH_HEX]


# -- decoding ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class DicomScan:
    """A decoded DICOM file: one uint8 ``(size, size)`` image per frame, and what the header says.

    ``frames`` holds ``(k, image)``: ``k`` is None for a single-frame file, the frame index for a
    multi-frame one; ``positions[i]`` is frame i's position along the slice normal (None: unknown).
    """

    frames: list[tuple[int | None, np.ndarray]]
    positions: list[float | None]
    facts: Facts
    subject: str | None  # SUBJECT_PREFIX + salted hash of PatientID, None without one
    series: str | None  # salted hash of SeriesInstanceUID
    salt_id: str


def _quiet_read(data: bytes) -> Any:
    """``dcmread`` of the needed tags only, with value validation off (its warnings quote values)."""
    import pydicom
    from pydicom import config

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config.settings.reading_validation_mode = config.IGNORE
        return pydicom.dcmread(io.BytesIO(data), specific_tags=READ_TAGS)


def _read(data: bytes) -> Any:
    """The dataset, or a DecodeError whose reason quotes no header value."""
    if len(data) < MAGIC_OFFSET + len(MAGIC) or not has_magic(data):
        raise DecodeError("not a DICOM file (no 'DICM' marker at byte 128)")
    try:
        return _quiet_read(data)
    except Exception as exc:  # the message could quote a value: only its class is shown
        raise DecodeError(f"corrupt DICOM header ({exc.__class__.__name__})") from None


def _number(ds: Any, name: str, default: float | None = None) -> float | None:
    try:
        value = ds.get(name)
        return default if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return default


def _vector(value: Any, n: int) -> np.ndarray | None:
    try:
        out = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return out if out.shape == (n,) and np.isfinite(out).all() else None


def _project(position: Any, orientation: Any) -> float | None:
    """ImagePositionPatient along the slice normal (row x column direction cosines), None if unknown."""
    ipp, iop = _vector(position, 3), _vector(orientation, 6)
    if ipp is None or iop is None:
        return None
    normal = np.cross(iop[:3], iop[3:])
    return float(ipp @ normal) if np.linalg.norm(normal) > 1e-6 else None


def _item(seq: Any, name: str) -> Any:
    """``seq[0].<name>[0]`` of a functional group, or None."""
    try:
        return seq[0].get(name)[0] if seq and seq[0].get(name) else None
    except (AttributeError, IndexError, TypeError):
        return None


def _positions(ds: Any, frames: int | None) -> list[float | None]:
    """Each frame's position along the slice normal; one single-frame file: else its InstanceNumber."""
    if frames is None:
        pos = _project(ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient"))
        return [pos if pos is not None else _number(ds, "InstanceNumber")]
    shared = _item(ds.get("SharedFunctionalGroupsSequence"), "PlaneOrientationSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    out: list[float | None] = []
    for k in range(frames):
        group = per_frame[k:k + 1]
        plane = _item(group, "PlanePositionSequence")
        orient = _item(group, "PlaneOrientationSequence") or shared
        out.append(_project(plane.get("ImagePositionPatient") if plane else None,
                            (orient.get("ImageOrientationPatient") if orient else None)
                            or ds.get("ImageOrientationPatient")))
    return out  # None: the frame index orders it (sources.slice_position)


def _header(ds: Any) -> tuple[int, int, int | None, int, int, int, str]:
    """Rows, columns, frames (None: single-frame), samples, bits allocated and stored, photometric."""
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        n_frames = int(ds.get("NumberOfFrames") or 1)
        samples = int(ds.get("SamplesPerPixel") or 1)
        allocated = int(ds.BitsAllocated)
        stored = int(ds.get("BitsStored") or allocated)
        photometric = str(ds.get("PhotometricInterpretation") or "MONOCHROME2").strip().upper()
    except (AttributeError, TypeError, ValueError):
        raise DecodeError("DICOM image without a valid Rows, Columns or BitsAllocated") from None
    return rows, cols, (n_frames if n_frames > 1 else None), samples, allocated, stored, photometric


def _check_decodable(ds: Any) -> None:
    """Refuse a transfer syntax whose pixels pydicom cannot decode here (no plugin installed)."""
    from pydicom.pixels import get_decoder

    tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if tsyntax is None:
        raise DecodeError("DICOM file without a TransferSyntaxUID in its file meta")
    if not tsyntax.is_transfer_syntax:
        uid = str(tsyntax)
        raise DecodeError(f"unknown transfer syntax {uid[:64]}" if re.fullmatch(r"[0-9.]+", uid) else
                          "unknown transfer syntax (not a UID)")
    if not tsyntax.is_compressed:
        return
    try:
        available = get_decoder(tsyntax).is_available
    except NotImplementedError:
        available = False
    if not available:
        raise DecodeError(f"compressed with {tsyntax.name}; pydicom cannot decode it without a plugin "
                          "(pylibjpeg/gdcm)")


def _to_uint8(frame: np.ndarray, ds: Any, stored: int, photometric: str, identity: bool) -> Image.Image:
    """One frame (``(rows, cols)`` or ``(rows, cols, 3)``) as an L image, exactly as a PNG of it would be."""
    signed = int(ds.get("PixelRepresentation") or 0) == 1
    if frame.ndim == 3:
        if stored > 8 or not identity or signed:
            raise DecodeError(f"{photometric} DICOM with {stored}-bit samples or a rescale is not supported")
        return to_gray(Image.fromarray(np.ascontiguousarray(frame.astype(np.uint8))))  # mode RGB
    if stored <= 8 and identity and not signed:
        plain = frame.astype(np.uint8)  # an 8-bit image is used as is, like an 8-bit PNG
        if photometric == "MONOCHROME1":
            plain = ((1 << stored) - 1 - plain).astype(np.uint8)
        return Image.fromarray(np.ascontiguousarray(plain))  # mode L
    from pydicom.pixels import apply_modality_lut

    values = np.asarray(apply_modality_lut(frame, ds), dtype=np.float32)
    if photometric == "MONOCHROME1":
        values = -values  # min-max scaling below then maps the largest value to black
    return to_gray(Image.fromarray(np.ascontiguousarray(values)))  # mode F: the 16-bit PNG path


def decode_dicom_bytes(data: bytes, size: int, preprocess: str = "none") -> DicomScan:
    """Decode a DICOM file's bytes: every frame at ``size`` px; DecodeError with the reason.

    The header's sizes are checked against the NIfTI caps before any pixel is decoded.
    """
    ds = _read(data)
    if "PixelData" not in ds:
        raise DecodeError(NO_PIXELS)
    salt = subject_salt()
    try:
        patient = str(ds.get("PatientID") or "").strip()
        series_uid = str(ds.get("SeriesInstanceUID") or "").strip()
    except Exception:  # never quote it
        raise DecodeError("corrupt DICOM header (PatientID or SeriesInstanceUID unreadable)") from None
    for name in ("PatientID", "SeriesInstanceUID"):
        if name in ds:
            delattr(ds, name)  # nothing below (pixel decoders, their errors) can see them
    subject = SUBJECT_PREFIX + hash_identifier(patient, "patient", salt) if patient else None
    series = hash_identifier(series_uid, "series", salt) if series_uid else None
    rows, cols, n_frames, samples, allocated, stored, photometric = _header(ds)
    check_image_size(cols, rows, "header")
    check_volume_size((n_frames or 1, rows, cols, samples), max(1, (allocated + 7) // 8))
    if (samples, photometric) not in SUPPORTED:
        shown = photometric if photometric in PHOTOMETRIC else "an unknown PhotometricInterpretation"  # no free text
        raise DecodeError(f"{shown} DICOM images with {samples} sample(s) per pixel are not supported")
    _check_decodable(ds)
    expected = rows * cols * (n_frames or 1) * samples * allocated // 8
    if not ds.file_meta.TransferSyntaxUID.is_compressed and len(ds.PixelData) < expected:
        raise DecodeError(f"truncated DICOM file: {len(ds.PixelData):,} of {expected:,} bytes of pixel data")
    slope, intercept = _number(ds, "RescaleSlope", 1.0), _number(ds, "RescaleIntercept", 0.0)
    identity = slope == 1.0 and intercept == 0.0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = np.asarray(ds.pixel_array)
    except Exception as exc:
        name = ds.file_meta.TransferSyntaxUID.name
        raise DecodeError(f"cannot decode the pixel data ({name}): {exc.__class__.__name__}") from None
    stack = pixels.reshape((n_frames or 1, rows, cols, *((samples,) if samples > 1 else ())))
    images = [square_resize(_to_uint8(frame, ds, stored, photometric, identity), size, preprocess)
              for frame in stack]
    frames: list[tuple[int | None, np.ndarray]] = [(k if n_frames else None, im) for k, im in enumerate(images)]
    facts = Facts(cols, rows, f"dicom:{photometric}"[:32], stored)
    return DicomScan(frames, _positions(ds, n_frames), facts, subject, series, salt_id())


# -- uploads -----------------------------------------------------------------------------------
def _zip_members(data: bytes) -> list[tuple[str, bytes]]:
    """The DICOM members of a zip, read in memory under MAX_ZIP_MEMBERS / MAX_ZIP_BYTES (nothing on disk)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError) as exc:
        raise DecodeError(f"not a readable zip file ({exc.__class__.__name__})") from None
    with archive:
        infos = [i for i in archive.infolist() if not i.is_dir()]
        if len(infos) > MAX_ZIP_MEMBERS:
            raise DecodeError(f"the zip holds {len(infos)} files: at most {MAX_ZIP_MEMBERS} are read")
        if sum(i.file_size for i in infos) > MAX_ZIP_BYTES:
            raise DecodeError(f"the zip unpacks to over {MAX_ZIP_BYTES >> 20} MiB: refused as a possible zip bomb")
        out: list[tuple[str, bytes]] = []
        total = 0
        for info in infos:
            base = info.filename.rsplit("/", 1)[-1]
            if not base or base.startswith(".") or "__MACOSX" in info.filename:
                continue
            try:
                with archive.open(info) as member:  # the sizes a header declares can lie: read at most the cap
                    body = member.read(MAX_ZIP_BYTES - total + 1)
            except Exception as exc:
                raise DecodeError(f"zip member {base[:60]}: unreadable ({exc.__class__.__name__})") from None
            total += len(body)
            if total > MAX_ZIP_BYTES:
                raise DecodeError(f"the zip unpacks to over {MAX_ZIP_BYTES >> 20} MiB: refused as a possible zip bomb")
            if has_magic(body[:MAGIC_OFFSET + len(MAGIC)]):
                out.append((base, body))
    if not out:
        raise DecodeError("the zip holds no DICOM file")
    return out


def decode_dicom_upload(data: bytes, size: int) -> list[tuple[int, np.ndarray]]:
    """An uploaded DICOM file, or a zip of one series, decoded in memory: ``[(i, uint8 (size, size))]``
    in slice order (``i`` = 0, 1, ... along the slice normal); DecodeError with a one-line reason.

    Files without pixel data in a zip (a DICOMDIR) are skipped; a zip of several series is refused.
    """
    from sslmri_core.data.sources import slice_position  # sources imports this module

    if has_magic(data[:MAGIC_OFFSET + len(MAGIC)]):
        members = [("upload.dcm", data)]
    elif zipfile.is_zipfile(io.BytesIO(data)):
        members = _zip_members(data)
    else:
        raise DecodeError("not a DICOM file (no 'DICM' marker at byte 128) nor a zip of DICOM files")
    found: list[tuple[float, int, np.ndarray]] = []
    series: set[str | None] = set()
    for name, body in members:
        try:
            scan = decode_dicom_bytes(body, size)
        except DecodeError as exc:
            if len(members) > 1 and str(exc) == NO_PIXELS:
                continue
            raise DecodeError(f"{name[:60]}: {exc}" if len(members) > 1 else str(exc)) from None
        series.add(scan.series)
        for (k, image), pos in zip(scan.frames, scan.positions, strict=True):
            at = slice_position(name, k, pos)
            found.append((at if at is not None else float(len(found)), len(found), image))
    if len(series) > 1:
        raise DecodeError(f"the zip holds {len(series)} series; upload one")
    if not found:
        raise DecodeError("the zip holds no DICOM image")
    found.sort(key=lambda t: (t[0], t[1]))
    return [(i, image) for i, (_, _, image) in enumerate(found)]
