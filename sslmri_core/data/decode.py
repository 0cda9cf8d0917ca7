"""Decoding one file into grayscale uint8 squares at the training size.

Images of any PIL mode (L, RGB, RGBA, P, CMYK, 16-bit, 32-bit) become grayscale; the aspect ratio
is kept by padding to a square before resizing (OASIS slices are 496x248 and must not be
squashed). NIfTI volumes are reoriented to RAS and cut into axial slices; empty slices are skipped.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

MAX_PIXELS = 64_000_000  # larger images are refused as probable decompression bombs
MIN_SIDE = 8
EMPTY_SLICE_SHARE = 0.01  # a slice with less than 1% non-zero voxels carries no anatomy
BIT_DEPTH = {"1": 1, "I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I": 32, "F": 32}


class DecodeError(ValueError):
    """A file that cannot be turned into an image; the message is the reason shown to the user."""


@dataclass(frozen=True)
class Facts:
    """Header facts of a file (or of one NIfTI slice)."""

    width: int
    height: int
    mode: str
    bit_depth: int


def _to_gray(img: Image.Image) -> Image.Image:
    """Any mode -> 8-bit L; high bit depths are min-max scaled rather than clipped."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(arr.astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))  # transparent pixels become background
        img = Image.alpha_composite(background, img)
    return img.convert("L")


def square_resize(gray: Image.Image, size: int) -> np.ndarray:
    """Pad an L image to a square (centred, black), resize: uint8 ``(size, size)``."""
    side = max(gray.width, gray.height)
    if gray.width != gray.height:
        square = Image.new("L", (side, side), 0)
        square.paste(gray, ((side - gray.width) // 2, (side - gray.height) // 2))
        gray = square
    return np.asarray(gray.resize((size, size), Image.BILINEAR), dtype=np.uint8)


def decode_image_bytes(data: bytes, size: int) -> tuple[np.ndarray, Facts]:
    """Decode image file bytes: ``(uint8 (size, size), header facts)``; raises DecodeError with the reason."""
    if not data:
        raise DecodeError("empty file (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise DecodeError(f"image too large: refused as a possible decompression bomb ({exc})") from exc
    except Image.UnidentifiedImageError as exc:
        raise DecodeError("not an image (unknown format or corrupt header)") from exc
    except Exception as exc:
        raise DecodeError(f"not a readable image: {exc.__class__.__name__}: {exc}") from exc
    with img:
        facts = Facts(img.width, img.height, img.mode, BIT_DEPTH.get(img.mode, 8))
        if img.width * img.height > MAX_PIXELS:
            raise DecodeError(f"image too large ({img.width}x{img.height}): refused as a possible decompression bomb")
        if min(img.width, img.height) < MIN_SIDE:
            raise DecodeError(f"image too small ({img.width}x{img.height}): at least {MIN_SIDE}x{MIN_SIDE} needed")
        if img.format == "JPEG":
            # Decode at a reduced DCT scale when that still leaves the long side >= size: much faster.
            scale = size / max(img.width, img.height)
            img.draft("L" if img.mode in ("L", "RGB") else img.mode, (int(img.width * scale) + 1, int(img.height * scale) + 1))
        try:
            img.load()
            gray = _to_gray(img)
        except Exception as exc:
            raise DecodeError(f"cannot decode: {exc.__class__.__name__}: {exc}") from exc
    return square_resize(gray, size), facts


def decode_image(path: str | Path, size: int) -> np.ndarray:
    """Decode an image file at ``path`` to uint8 ``(size, size)``."""
    return decode_image_bytes(Path(path).read_bytes(), size)[0]


def nifti_slices(path: str | Path, size: int) -> tuple[list[tuple[int, np.ndarray]], Facts]:
    """Axial slices of a 3-D NIfTI volume: ``[(z, uint8 (size, size))]`` for non-empty slices, and facts.

    The volume is reoriented to RAS; intensities are scaled to 0-255 by the 0.5 and 99.5
    percentiles of its non-zero voxels; NaN and inf voxels count as 0. Slices are shown with
    anterior up and the patient's right on the image's left (radiological convention).
    """
    import nibabel as nib

    try:
        img = nib.as_closest_canonical(nib.load(str(path)))
        shape = img.shape
    except Exception as exc:
        raise DecodeError(f"not a readable NIfTI volume: {exc.__class__.__name__}: {exc}") from exc
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise DecodeError(f"{len(shape)}-D volume {tuple(shape)}: only 3-D volumes are sliced (split 4-D series first)")
    try:
        vol = np.asarray(img.dataobj, dtype=np.float32).reshape(shape)
    except Exception as exc:
        raise DecodeError(f"cannot read the voxel data: {exc.__class__.__name__}: {exc}") from exc
    vol = np.nan_to_num(vol, nan=0.0, posinf=0.0, neginf=0.0)
    nonzero = vol[vol != 0]
    if nonzero.size == 0:
        raise DecodeError("volume is empty (every voxel is 0 or NaN)")
    lo, hi = np.percentile(nonzero, [0.5, 99.5])
    scaled = np.clip((vol - lo) / max(hi - lo, 1e-6), 0, 1) * 255.0
    scaled[vol == 0] = 0
    dtype = img.get_data_dtype()
    facts = Facts(int(shape[0]), int(shape[1]), f"nifti:{dtype}", int(dtype.itemsize * 8))
    slices = []
    for z in range(shape[2]):
        plane = scaled[:, :, z]
        if (plane > 0).mean() < EMPTY_SLICE_SHARE:
            continue
        view = np.fliplr(np.flipud(plane.T)).astype(np.uint8)  # rows: anterior first; columns: right to left
        slices.append((z, square_resize(Image.fromarray(np.ascontiguousarray(view)), size)))
    if not slices:
        raise DecodeError("no axial slice with anatomy (all slices empty)")
    return slices, facts
