"""Image handling for the Scan Explorer: uploads, stored scans, window/level and Grad-CAM overlays.

Importable without Streamlit (the tests call :func:`read_upload` directly with the broken-files
corpus). Scans named by the store are opened only through :func:`sslmri_core.train.runtime.scan_file`,
heat maps only through :func:`sslmri_core.train.runtime.run_file`, and uploads are written nowhere but a
:class:`tempfile.TemporaryDirectory` that is removed before the function returns.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sslmri_core.data.decode import DecodeError, decode_image_bytes, nifti_slices

MAX_UPLOAD_MB = 20
MAX_UPLOAD_BYTES = MAX_UPLOAD_MB * 1024 * 1024
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
UPLOAD_TYPES = ["png", "jpg", "jpeg", "nii", "gz"]  # st.file_uploader matches the last suffix only
DISPLAY_SIZE = 256
COLORMAPS = ("jet", "inferno", "viridis", "hot", "gray")
CAM_METHODS = ("gradcam", "gradcam++", "scorecam", "eigencam")


class UploadError(ValueError):
    """An upload that cannot be used; the message says why, in one line."""


@dataclass(frozen=True)
class Slice:
    """One 2-D image ready to show and to predict on: uint8 ``(S, S)``, with where it came from."""

    image: np.ndarray
    name: str
    note: str = ""
    slice_indices: list[int] = field(default_factory=list)  # NIfTI: every usable axial slice


def _suffix(name: str) -> str:
    lower = name.lower()
    return ".nii.gz" if lower.endswith(".nii.gz") else Path(lower).suffix


def read_upload(name: str, data: bytes, size: int = DISPLAY_SIZE, slice_index: int | None = None) -> Slice:
    """Validate and decode an uploaded PNG/JPEG or NIfTI slice; raises :class:`UploadError` with the reason.

    A NIfTI volume is written to a temporary folder (nibabel reads files, not bytes), cut into
    axial slices and the middle one (or ``slice_index``) is returned; the folder is removed at once.
    """
    suffix = _suffix(name)
    shown = Path(name).name
    if suffix not in IMAGE_SUFFIXES + NIFTI_SUFFIXES:
        raise UploadError(f"{shown}: not a PNG, JPEG or NIfTI (.nii, .nii.gz) file")
    if len(data) > MAX_UPLOAD_BYTES:
        raise UploadError(f"{shown}: {len(data) / 2**20:.1f} MB is over the {MAX_UPLOAD_MB} MB upload limit")
    if not data:
        raise UploadError(f"{shown}: empty file (0 bytes)")
    try:
        if suffix in IMAGE_SUFFIXES:
            image, facts = decode_image_bytes(data, size)
            return Slice(image, shown, f"{facts.width}x{facts.height} {facts.mode}")
        with tempfile.TemporaryDirectory(prefix="sslmri-upload-") as tmp:
            path = Path(tmp) / f"upload{suffix}"  # never the user's file name: no path tricks
            path.write_bytes(data)
            slices, facts = nifti_slices(path, size)
    except DecodeError as exc:
        raise UploadError(f"{shown}: {exc}") from None
    except Exception as exc:  # a decoder bug must not become a traceback on the page
        raise UploadError(f"{shown}: cannot read it ({exc.__class__.__name__}: {exc})") from None
    if not slices:
        raise UploadError(f"{shown}: the volume has no slice with anatomy (all empty)")
    indices = [z for z, _ in slices]
    pick = indices.index(slice_index) if slice_index in indices else len(slices) // 2
    z, image = slices[pick]
    return Slice(image, shown, f"axial slice {z} of {facts.width}x{facts.height}, {len(slices)} usable", indices)


def load_scan(path: str, roots: list[str], size: int = DISPLAY_SIZE) -> np.ndarray:
    """A stored scan (a prediction's ``scan``) read only inside the run's data folders: uint8 ``(S, S)``."""
    from sslmri_core.train.runtime import scan_file

    safe = scan_file(path, roots)
    if _suffix(safe.name) in NIFTI_SUFFIXES:
        raise DecodeError("a NIfTI volume: the stored prediction does not say which slice (open the volume via Upload)")
    if not safe.is_file():
        raise DecodeError(f"the file is not there any more: {safe}")
    return decode_image_bytes(safe.read_bytes(), size)[0]


def load_heatmap(out_dir: str | None, heatmap_path: str, size: int) -> np.ndarray:
    """A stored 8-bit Grad-CAM PNG (relative to its gradcam run's folder) as float ``(S, S)`` in [0, 1]."""
    from sslmri_core.train.runtime import run_file

    if not out_dir:
        raise DecodeError("the Grad-CAM run has no output folder recorded")
    safe = run_file(Path(out_dir) / heatmap_path, out_dir, "heat map")
    with Image.open(safe) as img:
        gray = img.convert("L").resize((size, size), Image.BILINEAR)
    return np.asarray(gray, dtype=np.float32) / 255.0


def window(image: np.ndarray, level: float, width: float) -> np.ndarray:
    """Window/level on uint8 intensities: ``level - width/2`` maps to black, ``level + width/2`` to white."""
    width = max(float(width), 1.0)
    lo = float(level) - width / 2
    out = (image.astype(np.float32) - lo) / width * 255.0
    return np.clip(out, 0, 255).astype(np.uint8)


def _colormap(cam: np.ndarray, name: str) -> np.ndarray:
    from matplotlib import colormaps

    return (colormaps[name](np.clip(cam, 0, 1))[..., :3] * 255).astype(np.float32)


def resize_cam(cam: np.ndarray, size: int) -> np.ndarray:
    """A CAM at the model's resolution, resized (bilinear) to the displayed image: float ``(size, size)``."""
    cam = np.asarray(cam, dtype=np.float32)
    if cam.shape == (size, size):
        return cam
    return np.asarray(Image.fromarray(cam, mode="F").resize((size, size), Image.BILINEAR), dtype=np.float32)


def overlay(image: np.ndarray, cam: np.ndarray | None, *, opacity: float, colormap: str, threshold: float,
            level: float = 127.5, width: float = 255.0) -> np.ndarray:
    """RGB ``(S, S, 3)`` uint8: the image under window/level with the CAM blended in where it is >= ``threshold``.

    Uses ``sslmri_core.explain.cam.render_overlay`` when that module is there, so the dashboard and
    the ``gradcam`` command draw identical overlays; otherwise the same blend is done here.
    """
    if cam is None:
        return np.repeat(window(image, level, width)[..., None], 3, axis=2)
    cam = resize_cam(cam, image.shape[0])
    width = max(float(width), 1.0)
    explain = explain_module()
    if explain is not None and hasattr(explain, "render_overlay"):
        return np.asarray(explain.render_overlay(image, cam, opacity=opacity, colormap=colormap, threshold=threshold,
                                                 window=(level - width / 2, level + width / 2)), dtype=np.uint8)
    gray = np.repeat(window(image, level, width)[..., None], 3, axis=2).astype(np.float32)
    alpha = (opacity * (cam >= threshold)).astype(np.float32)[..., None]
    return np.clip(gray * (1 - alpha) + _colormap(cam, colormap) * alpha, 0, 255).astype(np.uint8)


def cam_methods() -> tuple[str, ...]:
    explain = explain_module()
    return tuple(getattr(explain, "METHOD_NAMES", CAM_METHODS)) if explain is not None else CAM_METHODS


def explain_module() -> Any | None:
    """``sslmri_core.explain.cam`` (Grad-CAM on demand) when it is installed, else None."""
    try:
        from sslmri_core.explain import cam as explain
    except ImportError:
        return None
    return explain


def predict_with_cam(loaded: Any, image: np.ndarray, method: str = "gradcam") -> Any:
    """Prediction and CAM of one image with a loaded model (``sslmri_core.explain.cam``)."""
    explain = explain_module()
    if explain is None:
        raise RuntimeError("on-demand Grad-CAM needs sslmri_core/explain/cam.py, which is not installed in this version")
    return explain.explain_image(loaded, image, method=method)
