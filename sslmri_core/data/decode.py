"""Decoding one file into grayscale uint8 squares at the training size.

Images of any PIL mode (L, RGB, RGBA, P, CMYK, 16-bit, 32-bit) become grayscale; the aspect ratio
is kept by padding to a square before resizing (OASIS slices are 496x248 and must not be
squashed). NIfTI volumes are reoriented to RAS and cut into axial slices; empty slices are skipped.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sslmri_core.errors import UsageError

MAX_PIXELS = 64_000_000  # larger images are refused as probable decompression bombs
# A NIfTI header says how big its voxel data is before anything is decompressed: a 1.7 MB .nii.gz
# can claim gigabytes. 100 M voxels (e.g. 512 x 512 x 380) and 1 GiB of voxel data are far above
# any clinical MR volume.
MAX_VOXELS = 100_000_000
MAX_VOXEL_BYTES = 1 << 30
PERCENTILE_SAMPLE = 4_000_000  # intensity percentiles from at most this many voxels (a strided sample)
MIN_SIDE = 8
EMPTY_SLICE_SHARE = 0.01  # a slice with less than 1% non-zero voxels carries no anatomy
BIT_DEPTH = {"1": 1, "I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I": 32, "F": 32}
# Pillow reads some 40 formats, a few through external programs (EPS runs Ghostscript). Only these
# are ever opened, and a file's content must be the format its name says.
FOLDER_FORMATS = ("PNG", "JPEG", "BMP", "TIFF")
UPLOAD_FORMATS = ("PNG", "JPEG")
SUFFIX_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}


class DecodeError(UsageError):
    """A file that cannot be turned into an image; the message is the reason shown to the user."""


@dataclass(frozen=True)
class Facts:
    """Header facts of a file (or of one NIfTI slice)."""

    width: int
    height: int
    mode: str
    bit_depth: int


def to_gray(img: Image.Image) -> Image.Image:
    """Any mode -> 8-bit L; high bit depths are min-max scaled (over finite values) rather than clipped."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        finite = np.isfinite(arr)
        if not finite.any():
            raise DecodeError("no finite pixel value (every pixel is NaN or infinite)")
        lo, hi = float(arr[finite].min()), float(arr[finite].max())
        arr = np.where(finite, arr, lo)  # NaN and inf pixels become background, as in NIfTI volumes
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(arr.astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))  # transparent pixels become background
        img = Image.alpha_composite(background, img)
    return img.convert("L")


def square_resize(gray: Image.Image, size: int, preprocess: str = "none") -> np.ndarray:
    """Prepare an L image (:func:`sslmri_core.data.head.prepare`: head crop, intensity normalisation), pad it
    to a square (centred, black), resize: uint8 ``(size, size)``."""
    if preprocess != "none":
        from sslmri_core.data.head import prepare

        gray = Image.fromarray(prepare(np.asarray(gray, dtype=np.uint8), preprocess))
    side = max(gray.width, gray.height)
    if gray.width != gray.height:
        square = Image.new("L", (side, side), 0)
        square.paste(gray, ((side - gray.width) // 2, (side - gray.height) // 2))
        gray = square
    return np.asarray(gray.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def _plugin_reason(data: bytes, fmt: str | None) -> str:
    """Why ``fmt``'s own Pillow plugin refused ``data`` (e.g. ``broken PNG file (chunk b'[/]a')``), or ""."""
    if fmt is None or fmt not in Image.OPEN:
        return ""
    try:
        plugin: Any = Image.OPEN[fmt][0]  # only the plugin of the format the name says
        plugin(io.BytesIO(data)).close()
    except Exception as exc:
        return f": {exc}"
    return ""


def _open(data: bytes, suffix: str | None, formats: tuple[str, ...]) -> Image.Image:
    """Open with Pillow restricted to ``formats`` (and to the one ``suffix`` names, when it names one)."""
    expected = SUFFIX_FORMATS.get(suffix.lower()) if suffix else None
    if expected is not None and expected not in formats:
        raise DecodeError(f"{suffix} files are not accepted here (only {', '.join(formats)})")
    try:
        return Image.open(io.BytesIO(data), formats=[expected] if expected else list(formats))
    except Image.UnidentifiedImageError:
        detail = _plugin_reason(data, expected)
    if expected is not None:
        try:  # which allowed format is it, then? (still never another decoder)
            with Image.open(io.BytesIO(data), formats=list(formats)) as other:
                found = other.format
        except Exception:
            found = None
        if found:
            raise DecodeError(f"named {suffix} but the content is {found}: a mismatch, refused") from None
    raise DecodeError(f"not a {expected or ', '.join(formats)} image (another format, or a corrupt header{detail})") \
        from None


def check_image_size(width: int, height: int, source: str = "") -> None:
    """Refuse, before any pixel is decoded, an image over :data:`MAX_PIXELS` (a probable decompression
    bomb) or under :data:`MIN_SIDE` on a side; ``source`` says where the size came from (e.g. "header")."""
    where = f", {source}" if source else ""
    if width * height > MAX_PIXELS:
        raise DecodeError(f"image too large ({width}x{height}{where}): refused as a possible decompression bomb")
    if min(width, height) < MIN_SIDE:
        raise DecodeError(f"image too small ({width}x{height}): at least {MIN_SIDE}x{MIN_SIDE} needed")


def decode_image_bytes(data: bytes, size: int, *, suffix: str | None = None, formats: tuple[str, ...] = FOLDER_FORMATS,
                       preprocess: str = "none") -> tuple[np.ndarray, Facts]:
    """Decode image file bytes: ``(uint8 (size, size), header facts)``; raises DecodeError with the reason.

    Only ``formats`` are opened; with ``suffix`` (the file name's, e.g. ``.png``) the content must be
    the format the suffix names; ``preprocess`` as in :func:`square_resize`.
    """
    if not data:
        raise DecodeError("empty file (0 bytes)")
    try:
        img = _open(data, suffix, formats)
    except DecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise DecodeError(f"image too large: refused as a possible decompression bomb ({exc})") from exc
    except Exception as exc:
        raise DecodeError(f"not a readable image: {exc.__class__.__name__}: {exc}") from exc
    with img:
        facts = Facts(img.width, img.height, img.mode, BIT_DEPTH.get(img.mode, 8))
        check_image_size(img.width, img.height)
        if img.format == "JPEG" and preprocess == "none":  # a crop is cut from the full resolution
            # Decode at a reduced DCT scale when that still leaves the long side >= size: much faster.
            scale = size / max(img.width, img.height)
            img.draft("L" if img.mode in ("L", "RGB") else img.mode,
                      (int(img.width * scale) + 1, int(img.height * scale) + 1))
        try:
            img.load()
            gray = to_gray(img)
        except DecodeError:
            raise
        except Exception as exc:
            raise DecodeError(f"cannot decode: {exc.__class__.__name__}: {exc}") from exc
    return square_resize(gray, size, preprocess), facts


def decode_image(path: str | Path, size: int, preprocess: str = "none") -> np.ndarray:
    """Decode an image file at ``path`` to uint8 ``(size, size)``."""
    return decode_image_bytes(Path(path).read_bytes(), size, suffix=Path(path).suffix, preprocess=preprocess)[0]


def check_volume_size(shape: tuple[int, ...], itemsize: int) -> None:
    """Refuse (DecodeError) a volume whose header claims more voxels or bytes than the caps."""
    voxels = int(np.prod(shape, dtype=np.int64)) if shape else 0
    if voxels > MAX_VOXELS or voxels * itemsize > MAX_VOXEL_BYTES:
        raise DecodeError(f"volume too large ({'x'.join(str(int(s)) for s in shape)} voxels of {itemsize} bytes, "
                          f"header): refused as a possible decompression bomb (at most {MAX_VOXELS:,} voxels "
                          f"and {MAX_VOXEL_BYTES >> 20} MiB)")


def _intensity_range(vol: np.ndarray) -> tuple[float, float]:
    """The 0.5 and 99.5 percentiles of the non-zero voxels (a strided sample of at most PERCENTILE_SAMPLE)."""
    flat = vol.reshape(-1)
    step = max(1, flat.size // PERCENTILE_SAMPLE)
    sample = flat[::step]
    nonzero = sample[sample != 0]
    if nonzero.size == 0:
        nonzero = flat[flat != 0]  # a sparse volume: the sample may have missed it
    if nonzero.size == 0:
        raise DecodeError("volume is empty (every voxel is 0 or NaN)")
    lo, hi = np.percentile(nonzero, [0.5, 99.5])
    return float(lo), float(hi)


def nifti_slices(path: str | Path, size: int, preprocess: str = "none") -> tuple[list[tuple[int, np.ndarray]], Facts]:
    """Axial slices of a 3-D NIfTI volume: ``[(z, uint8 (size, size))]`` for non-empty slices, and facts.

    The header is read first and a volume over :data:`MAX_VOXELS` / :data:`MAX_VOXEL_BYTES` is
    refused before any voxel is decompressed. The volume is reoriented to RAS; intensities are
    scaled to 0-255 by the 0.5 and 99.5 percentiles of its non-zero voxels; NaN and inf voxels
    count as 0. One float32 copy of the volume is held; slices are scaled one at a time. Slices
    are shown with anterior up and the patient's right on the image's left (radiological convention).
    ``preprocess`` as in :func:`square_resize`, per slice.
    """
    import nibabel as nib

    try:
        raw: Any = nib.load(str(path))  # header only: the voxel data is read lazily
        dtype = raw.get_data_dtype()
        shape = tuple(int(s) for s in raw.shape)
    except Exception as exc:
        raise DecodeError(f"not a readable NIfTI volume: {exc.__class__.__name__}: {exc}") from exc
    check_volume_size(shape, max(int(dtype.itemsize), 4))  # decoded as float32 at least
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise DecodeError(f"{len(shape)}-D volume {tuple(shape)}: only 3-D volumes are sliced (split 4-D series first)")
    try:
        img = nib.as_closest_canonical(raw)
        vol = np.asarray(img.dataobj, dtype=np.float32).reshape(img.shape[:3])
    except Exception as exc:
        raise DecodeError(f"cannot read the voxel data: {exc.__class__.__name__}: {exc}") from exc
    np.nan_to_num(vol, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = _intensity_range(vol)
    facts = Facts(int(vol.shape[0]), int(vol.shape[1]), f"nifti:{dtype}", int(dtype.itemsize * 8))
    slices = []
    for z in range(vol.shape[2]):
        plane = vol[:, :, z]
        scaled = np.clip((plane - lo) / max(hi - lo, 1e-6), 0, 1) * 255.0
        scaled[plane == 0] = 0
        if (scaled > 0).mean() < EMPTY_SLICE_SHARE:
            continue
        view = np.fliplr(np.flipud(scaled.T)).astype(np.uint8)  # rows: anterior first; columns: right to left
        slices.append((z, square_resize(Image.fromarray(np.ascontiguousarray(view)), size, preprocess)))
    if not slices:
        raise DecodeError("no axial slice with anatomy (all slices empty)")
    return slices, facts
