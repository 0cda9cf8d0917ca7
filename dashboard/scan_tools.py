"""Image handling for the Scan Explorer: uploads, stored scans, window/level and Grad-CAM overlays.

Importable without Streamlit (the tests call :func:`read_upload` directly with the broken-files
corpus) and without torch: only :func:`load_model` and :func:`predict_with_cam` (on-demand Grad-CAM)
import it, inside the call. Scans named by the store are opened only through :func:`sslmri_core.paths.scan_file`,
heat maps and checkpoints only through :func:`sslmri_core.paths.viewable_run_file`, the store only through its
read-only queries (on-demand Grad-CAM included), and uploads are written nowhere but a
:class:`tempfile.TemporaryDirectory` that is removed before the function returns.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sslmri_core.data.decode import UPLOAD_FORMATS, DecodeError, decode_image_bytes, nifti_slices
from sslmri_core.explain.overlay import apply_window, level_width_window, render_overlay

MAX_UPLOAD_MB = 20
MAX_UPLOAD_BYTES = MAX_UPLOAD_MB * 1024 * 1024
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
UPLOAD_TYPES = ["png", "jpg", "jpeg", "nii", "gz"]  # st.file_uploader matches the last suffix only
DISPLAY_SIZE = 256
COLORMAPS = ("jet", "inferno", "viridis", "hot", "gray")


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


@dataclass(frozen=True)
class Upload:
    """A decoded upload: every usable slice (one for a PNG/JPEG), so showing another slice decodes nothing."""

    name: str
    slices: list[tuple[int, np.ndarray]]  # (axial index, uint8 (S, S)); a 2-D image is the one slice 0
    note: str  # PNG/JPEG: "WxH mode"; NIfTI: "WxH" of the volume
    volume: bool = False

    def slice(self, slice_index: int | None = None) -> Slice:
        """A NIfTI volume's slice ``slice_index`` (default and unknown: the middle one); the image of a PNG/JPEG."""
        if not self.volume:
            return Slice(self.slices[0][1], self.name, self.note)
        indices = [z for z, _ in self.slices]
        pick = indices.index(slice_index) if slice_index in indices else len(self.slices) // 2
        z, image = self.slices[pick]
        return Slice(image, self.name, f"axial slice {z} of {self.note}, {len(self.slices)} usable", indices)


def decode_upload(name: str, data: bytes, size: int = DISPLAY_SIZE) -> Upload:
    """Validate and decode an uploaded PNG/JPEG or NIfTI volume; raises :class:`UploadError` with the reason.

    A NIfTI volume is written to a temporary folder (nibabel reads files, not bytes) and cut into
    axial slices; the folder is removed at once.
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
            image, facts = decode_image_bytes(data, size, suffix=suffix, formats=UPLOAD_FORMATS)
            return Upload(shown, [(0, image)], f"{facts.width}x{facts.height} {facts.mode}")
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
    return Upload(shown, list(slices), f"{facts.width}x{facts.height}", volume=True)


def read_upload(name: str, data: bytes, size: int = DISPLAY_SIZE, slice_index: int | None = None) -> Slice:
    """An uploaded PNG/JPEG, or a NIfTI volume's middle slice (or ``slice_index``); :class:`UploadError` if unusable."""
    return decode_upload(name, data, size).slice(slice_index)


UPLOAD_STATE_KEY = "upload_decoded"  # in st.session_state: the one decoded upload of this browser session


def cached_upload(state: MutableMapping[str, Any], name: str, data: bytes, size: int = DISPLAY_SIZE, *,
                  decode: Callable[[str, bytes, int], Upload] | None = None) -> Upload:
    """:func:`decode_upload`, once per file: the result (or the reason it is unusable) is kept in
    ``state[UPLOAD_STATE_KEY]`` under a hash of the file's name, bytes and ``size``, so reruns (a slider,
    the opacity, another slice of the volume) decode nothing. A different file replaces it: one at most."""
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass") + b"\0" + data).hexdigest() + f":{int(size)}"
    entry = state.get(UPLOAD_STATE_KEY)
    if not isinstance(entry, dict) or entry.get("key") != digest:
        state.pop(UPLOAD_STATE_KEY, None)  # drop the old file before decoding the new one
        try:
            entry = {"key": digest, "upload": (decode or decode_upload)(name, data, size), "error": None}
        except UploadError as exc:
            entry = {"key": digest, "upload": None, "error": str(exc)}
        state[UPLOAD_STATE_KEY] = entry
    if entry["upload"] is None:
        raise UploadError(entry["error"])
    return entry["upload"]


def forget_upload(state: MutableMapping[str, Any]) -> None:
    """Drop the cached upload (the file was removed from the uploader)."""
    state.pop(UPLOAD_STATE_KEY, None)


def load_scan(path: str, roots: list[str], size: int = DISPLAY_SIZE) -> np.ndarray:
    """A stored scan (a prediction's ``scan``) read only inside the run's data folders: uint8 ``(S, S)``."""
    from sslmri_core.paths import scan_file

    safe = scan_file(path, roots)
    if _suffix(safe.name) in NIFTI_SUFFIXES:
        raise DecodeError("a NIfTI volume: the stored prediction does not say which slice (open the volume via Upload)")
    if not safe.is_file():
        raise DecodeError(f"the file is not there any more: {safe}")
    return decode_image_bytes(safe.read_bytes(), size)[0]


def load_heatmap(out_dir: str | None, heatmap_path: str, size: int) -> np.ndarray:
    """A stored 8-bit Grad-CAM PNG (relative to its gradcam run's folder) as float ``(S, S)`` in [0, 1]."""
    from sslmri_core.paths import viewable_run_file

    if not out_dir:
        raise DecodeError("the Grad-CAM run has no output folder recorded")
    safe = viewable_run_file(Path(out_dir) / heatmap_path, out_dir, "heat map")
    with Image.open(safe, formats=["PNG"]) as img:
        gray = img.convert("L").resize((size, size), Image.BILINEAR)
    return np.asarray(gray, dtype=np.float32) / 255.0


def resize_cam(cam: np.ndarray, size: int) -> np.ndarray:
    """A CAM at the model's resolution, resized (bilinear) to the displayed image: float ``(size, size)``."""
    cam = np.asarray(cam, dtype=np.float32)
    if cam.shape == (size, size):
        return cam
    return np.asarray(Image.fromarray(cam, mode="F").resize((size, size), Image.BILINEAR), dtype=np.float32)


def overlay(image: np.ndarray, cam: np.ndarray | None, *, opacity: float, colormap: str, threshold: float,
            level: float = 127.5, width: float = 255.0) -> np.ndarray:
    """RGB ``(S, S, 3)`` uint8: the image under window/level with the CAM (resized to the image) blended in
    where it is >= ``threshold`` (drawn by :func:`sslmri_core.explain.overlay.render_overlay`)."""
    if cam is None:
        return np.repeat(apply_window(image, level, width)[..., None], 3, axis=2)
    return render_overlay(image, resize_cam(cam, image.shape[0]), opacity=opacity, colormap=colormap,
                          threshold=threshold, window=level_width_window(level, width))


def load_model(url: str, run_id: int) -> Any:
    """The classifier of fine-tuning run ``run_id``: the run read through the read-only store, its checkpoint
    only under ``$SSLMRI_RUNS_ROOTS`` (imports torch: only on demand)."""
    from sslmri_core.explain.cam import load_model_for_run

    return load_model_for_run(url, run_id)


def predict_with_cam(loaded: Any, image: np.ndarray, method: str = "gradcam") -> Any:
    """Prediction and CAM of one image with a model from :func:`load_model` (imports torch: only on demand)."""
    from sslmri_core.explain.cam import explain_image

    return explain_image(loaded, image, method=method)
