"""A corpus of broken and unusual image files, generated (never real data)."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from sslmri_core.data.ingest import process_file as _real_process_file  # before any test patches it


def png_bytes(mode: str = "L", size: tuple[int, int] = (40, 30), value: int = 120) -> bytes:
    buf = io.BytesIO()
    if mode == "I;16":
        Image.fromarray(np.full(size[::-1], value * 200, dtype=np.uint16)).save(buf, "PNG")
    elif mode == "P":
        Image.new("L", size, value).convert("P").save(buf, "PNG")
    else:
        fill = value if mode == "L" else tuple([value] * len(mode))
        Image.new(mode, size, fill).save(buf, "PNG")
    return buf.getvalue()


def huge_header_png(width: int = 30000, height: int = 30000) -> bytes:
    """A valid PNG signature and IHDR claiming ``width x height`` pixels, with almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def jpeg_bytes(mode: str = "RGB", size: tuple[int, int] = (64, 48)) -> bytes:
    buf = io.BytesIO()
    fill = 128 if mode == "L" else tuple([128] * len(mode))
    Image.new(mode, size, fill).save(buf, "JPEG")
    return buf.getvalue()


def encoded(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


def float_tiff(values: np.ndarray) -> bytes:
    """A 32-bit float TIFF (mode F) of ``values``."""
    return encoded(Image.fromarray(values.astype(np.float32), mode="F"), "TIFF")


def float_tiff_with_nan() -> bytes:
    """A gradient with one NaN and one inf pixel: usable, scaled over its finite values."""
    values = np.tile(np.linspace(0.0, 1000.0, 40, dtype=np.float32), (30, 1))
    values[3, 4], values[10, 20] = np.nan, np.inf
    return float_tiff(values)


EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 40 30\n%%EndComments\n"
       b"newpath 0 0 moveto 40 30 lineto stroke\nshowpage\n%%EOF\n")  # Pillow would hand this to Ghostscript


def truncated_jpeg() -> bytes:
    """A noisy JPEG cut in half: the header reads, the pixel data ends early."""
    buf = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buf, "JPEG", quality=95)
    data = buf.getvalue()
    return data[: len(data) // 2]


def nifti_with_nans(path: Path) -> None:
    """A 3-D volume whose anatomy (slices 2..7 of 10) has NaN voxels: usable, NaN read as 0."""
    import nibabel as nib

    vol = np.zeros((24, 24, 10), dtype=np.float32)
    vol[4:20, 4:20, 2:8] = np.random.default_rng(1).random((16, 16, 6)) + 1
    vol[5:9, 5:9, 3:5] = np.nan
    nib.save(nib.Nifti1Image(vol, np.eye(4)), path)


def nifti_4d(path: Path) -> None:
    """A 4-D series (e.g. fMRI): refused with a reason."""
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.ones((8, 8, 4, 3), np.float32), np.eye(4)), path)


NIFTI_NAN_SLICES = 6  # usable axial slices of nifti_with_nans


def write_corpus(root: Path) -> dict[str, str | None]:
    """Write good and bad files under ``root/<class>/``; returns rel path -> expected reason fragment (None = usable).

    A NIfTI volume is one file; the one with NaNs gives :data:`NIFTI_NAN_SLICES` images.
    """
    files: dict[str, bytes] = {
        "glioma/sub-01_L.png": png_bytes("L"),
        "glioma/sub-02_rgb.png": png_bytes("RGB"),
        "glioma/sub-03_rgba.png": png_bytes("RGBA"),
        "glioma/sub-04_16bit.png": png_bytes("I;16"),
        "glioma/sub-05_palette.png": png_bytes("P"),
        "glioma/sub-06_cmyk.jpg": jpeg_bytes("CMYK"),
        "glioma/sub-07 ünïcode spaced.jpg": jpeg_bytes("L"),
        "glioma/sub-08_wide.bmp": encoded(Image.new("L", (80, 20), 120), "BMP"),
        "notumor/sub-09_tiff.tif": encoded(Image.new("L", (40, 30), 120), "TIFF"),
        "notumor/sub-18_png_named.bmp": png_bytes("L"),  # content and name disagree
        "notumor/sub-19_eps.png": EPS,
        "glioma/sub-20_float_nan.tif": float_tiff_with_nan(),
        "notumor/sub-21_all_nan.tif": float_tiff(np.full((30, 40), np.nan)),
        "notumor/sub-10_truncated.jpg": truncated_jpeg(),
        "notumor/sub-11_zero.png": b"",
        "notumor/sub-12_text.png": b"this is not an image at all\n",
        "notumor/sub-13_one_pixel.png": png_bytes("L", (1, 1)),
        "notumor/sub-14_bomb.png": huge_header_png(),
        "notumor/notes.txt": b"free text",
    }
    expected: dict[str, str | None] = {
        "glioma/sub-01_L.png": None, "glioma/sub-02_rgb.png": None, "glioma/sub-03_rgba.png": None,
        "glioma/sub-04_16bit.png": None, "glioma/sub-05_palette.png": None, "glioma/sub-06_cmyk.jpg": None,
        "glioma/sub-07 ünïcode spaced.jpg": None, "glioma/sub-08_wide.bmp": None, "notumor/sub-09_tiff.tif": None,
        "notumor/sub-10_truncated.jpg": "truncated",
        "notumor/sub-11_zero.png": "empty file",
        "notumor/sub-12_text.png": "not a PNG image",
        "notumor/sub-18_png_named.bmp": "named .bmp but the content is PNG",
        "notumor/sub-19_eps.png": "not a PNG image",
        "glioma/sub-20_float_nan.tif": None,
        "notumor/sub-21_all_nan.tif": "no finite pixel",
        "notumor/sub-13_one_pixel.png": "too small",
        "notumor/sub-14_bomb.png": "too large",
        "glioma/sub-16_T1w_nan.nii.gz": None,
        "notumor/sub-17_bold.nii": "4-D",
        "notumor/notes.txt": "not an image file type",
        "notumor/loop.png": "loop",
        "notumor/dangling.png": "broken symbolic link",
        "stray.png": "directly in the data folder",
    }
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "stray.png").write_bytes(png_bytes("L"))
    nifti_with_nans(root / "glioma" / "sub-16_T1w_nan.nii.gz")
    nifti_4d(root / "notumor" / "sub-17_bold.nii")
    os.symlink(root / "notumor" / "loop.png", root / "notumor" / "loop.png")  # points at itself
    os.symlink(root / "notumor" / "gone.png", root / "notumor" / "dangling.png")
    (root / "meningioma").mkdir()  # an empty class folder
    return expected


def nifti_bomb(path: Path, shape: tuple[int, int, int] = (2000, 2000, 30)) -> None:
    """A .nii.gz of a few hundred bytes whose header claims ``shape`` float32 voxels (480 MB by default)."""
    import gzip

    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32)
    header["vox_offset"] = 352
    with gzip.open(path, "wb") as f:
        f.write(header.binaryblock + b"\0" * 4 + b"\0" * 4096)


def crash_on(job: tuple[str, str, int, str]) -> object:
    """``ingest.process_file``, except that a file named ``*crash*`` kills its process (as the OOM killer would)."""
    if "crash" in Path(job[0]).name:
        os._exit(137)
    return _real_process_file(job)


def markup_chunk_png() -> bytes:
    """A PNG whose second chunk type is ``[/]a``: Pillow quotes it in its error, as Rich markup would read it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", 40, 30, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"[/]a", b"") + chunk(b"IEND", b"")
