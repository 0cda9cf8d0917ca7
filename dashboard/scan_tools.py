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
import re
import tempfile
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from sslmri_core.data.decode import UPLOAD_FORMATS, DecodeError, decode_image_bytes, nifti_slices
from sslmri_core.data.dicom import decode_dicom_upload
from sslmri_core.data.scans import read_scan, split_key
from sslmri_core.data.sources import slice_position
from sslmri_core.explain.overlay import apply_window, level_width_window, render_overlay
from sslmri_core.explain.report import stored_stat_lines

MAX_UPLOAD_MB = 20
MAX_UPLOAD_BYTES = MAX_UPLOAD_MB * 1024 * 1024
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".zip", "")  # a DICOM file (with or without .dcm) or a zip of one series
UPLOAD_TYPES = ["png", "jpg", "jpeg", "nii", "gz", "dcm", "zip"]  # st.file_uploader matches the last suffix only
DISPLAY_SIZE = 256  # uploads: decoded at this size (what the model is given, resized to its input)
VIEW_PX = 512  # the Scan Explorer's image: decoded and drawn at this size for every model and slice
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
    note: str  # PNG/JPEG: "WxH mode"; NIfTI: "WxH" of the volume; DICOM: "DICOM"
    volume: bool = False
    slice_label: str = "Axial slice"  # the slice picker's label

    def slice(self, slice_index: int | None = None) -> Slice:
        """A NIfTI volume's slice ``slice_index`` (default and unknown: the middle one); the image of a PNG/JPEG."""
        if not self.volume:
            return Slice(self.slices[0][1], self.name, self.note)
        indices = [z for z, _ in self.slices]
        pick = indices.index(slice_index) if slice_index in indices else len(self.slices) // 2
        z, image = self.slices[pick]
        what = "axial slice" if self.slice_label == "Axial slice" else "slice"
        return Slice(image, self.name, f"{what} {z} of {self.note}, {len(self.slices)} usable", indices)


def decode_upload(name: str, data: bytes, size: int = DISPLAY_SIZE) -> Upload:
    """Validate and decode an uploaded PNG/JPEG, NIfTI volume, DICOM file or zip of one DICOM series; raises
    :class:`UploadError` with the reason.

    A NIfTI volume is written to a temporary folder (nibabel reads files, not bytes) and cut into
    axial slices; the folder is removed at once. DICOM is decoded in memory
    (:func:`sslmri_core.data.dicom.decode_dicom_upload`), its slices in position order.
    """
    suffix = _suffix(name)
    shown = Path(name).name
    if suffix not in IMAGE_SUFFIXES + NIFTI_SUFFIXES + DICOM_SUFFIXES:
        raise UploadError(f"{shown}: not a PNG, JPEG, NIfTI (.nii, .nii.gz) or DICOM (.dcm, .zip of one series) file")
    if len(data) > MAX_UPLOAD_BYTES:
        raise UploadError(f"{shown}: {len(data) / 2**20:.1f} MB is over the {MAX_UPLOAD_MB} MB upload limit")
    if not data:
        raise UploadError(f"{shown}: empty file (0 bytes)")
    try:
        if suffix in IMAGE_SUFFIXES:
            image, facts = decode_image_bytes(data, size, suffix=suffix, formats=UPLOAD_FORMATS)
            return Upload(shown, [(0, image)], f"{facts.width}x{facts.height} {facts.mode}")
        if suffix in DICOM_SUFFIXES:
            frames = decode_dicom_upload(data, size)
            if len(frames) == 1:
                return Upload(shown, frames, "DICOM")
            return Upload(shown, frames, "a DICOM series in position order", volume=True,
                          slice_label="Slice (in position order)")
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


def cached_upload(state: MutableMapping[Any, Any], name: str, data: bytes, size: int = DISPLAY_SIZE, *,
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


def forget_upload(state: MutableMapping[Any, Any]) -> None:
    """Drop the cached upload (the file was removed from the uploader)."""
    state.pop(UPLOAD_STATE_KEY, None)


def load_scan(key: str, roots: list[str], size: int = VIEW_PX, preprocess: str = "none") -> np.ndarray:
    """A stored scan (a prediction's ``scan``: an image or DICOM file, a NIfTI slice or DICOM frame ``path#z=k``)
    read only inside the run's data folders (:func:`sslmri_core.paths.scan_file` checks the file part), then
    decoded as training decoded it (:func:`sslmri_core.data.scans.read_scan`, with the run's ``preprocess``):
    uint8 ``(size, size)``."""
    from sslmri_core.paths import scan_file

    path, z = split_key(key)
    safe = scan_file(path, roots)
    if not safe.is_file():
        raise DecodeError(f"the file is not there any more: {safe}")
    return read_scan(str(safe) if z is None else f"{safe}#z={z}", size, preprocess)


def model_view(image: np.ndarray, preprocess: str, size: int = VIEW_PX) -> np.ndarray:
    """An uploaded slice (uint8 ``(S, S)``) as a model trained with ``preprocess`` sees it, at ``size``: the
    head crop and intensity normalisation of training (on the decoded upload, not the file's full resolution)."""
    from PIL import Image

    from sslmri_core.data.decode import square_resize

    return square_resize(Image.fromarray(np.asarray(image, np.uint8)), size, preprocess)


def load_heatmap(out_dir: str | None, heatmap_path: str) -> np.ndarray:
    """A stored 8-bit Grad-CAM PNG (relative to its gradcam run's folder) as float in [0, 1] at its own size;
    :func:`overlay` resizes it (bilinear, like an on-demand map) to the displayed image."""
    from sslmri_core.paths import viewable_run_file

    if not out_dir:
        raise DecodeError("the Grad-CAM run has no output folder recorded")
    safe = viewable_run_file(Path(out_dir) / heatmap_path, out_dir, "heat map")
    with Image.open(safe, formats=["PNG"]) as img:
        gray = img.convert("L")
    return np.asarray(gray, dtype=np.float32) / 255.0


def resize_grey(image: np.ndarray, size: int) -> np.ndarray:
    """A uint8 grey image resized (bilinear) to ``(size, size)``."""
    if image.shape == (size, size):
        return image
    grey = Image.fromarray(np.asarray(image, np.uint8))
    return np.asarray(grey.resize((size, size), Image.Resampling.BILINEAR), np.uint8)


def resize_cam(cam: np.ndarray, size: int) -> np.ndarray:
    """A CAM at the model's (or the stored PNG's) resolution, resized bilinear to the displayed image: the one
    path every map takes, so a 7x7 or 64x64 map is drawn smooth, never as blocks. float ``(size, size)``."""
    cam = np.asarray(cam, dtype=np.float32)
    if cam.shape == (size, size):
        return cam
    return np.asarray(Image.fromarray(cam, mode="F").resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)


def overlay(image: np.ndarray, cam: np.ndarray | None, *, opacity: float, colormap: str, threshold: float,
            level: float = 127.5, width: float = 255.0, size: int | None = None) -> np.ndarray:
    """RGB ``(S, S, 3)`` uint8 at ``size`` (default: the image's): the image under window/level with the CAM
    (resized bilinear to it) blended in where it is >= ``threshold`` (drawn by
    :func:`sslmri_core.explain.overlay.render_overlay`)."""
    image = resize_grey(image, size or image.shape[0])
    if cam is None:
        return np.repeat(apply_window(image, level, width)[..., None], 3, axis=2)
    return render_overlay(image, resize_cam(cam, image.shape[0]), opacity=opacity, colormap=colormap,
                          threshold=threshold, window=level_width_window(level, width))


# -- slice order, window presets, the statistics beside their references -------------------------------------
def natural_key(text: str) -> list[tuple[int, int, str]]:
    """``slice_2`` before ``slice_10``."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text)]


def slice_order(scans: list[str], positions: dict[str, float | None]) -> list[tuple[str, float | None]]:
    """A subject's slices along the slice axis with the position used: the stored manifest ``position`` when every
    slice has one, else :func:`sslmri_core.data.sources.slice_position` of the key (a NIfTI slice's index, the
    last number in an image's name; natural order of the name for ties and names without a number)."""
    stored = [positions.get(s) for s in scans]
    if scans and all(p is not None for p in stored):
        placed = list(zip(scans, stored, strict=True))
    else:
        placed = [(s, slice_position(split_key(s)[0], split_key(s)[1])) for s in scans]
    return sorted(placed, key=lambda sp: (sp[1] is None, sp[1] if sp[1] is not None else 0.0, natural_key(sp[0])))


WINDOW_PRESETS = {
    "Full range": "grey values 0-255 as stored",
    "Brain": "5th-99.5th percentile of the pixels inside the head mask: soft tissue fills the grey scale, "
             "the dark background is left out",
    "Auto": "1st-99th percentile of the whole slice",
}


def _window(lo: float, hi: float) -> tuple[int, int]:
    """(level, width) as the sliders take them (whole numbers; width at least 1)."""
    lo, hi = max(0.0, float(lo)), min(255.0, float(hi))
    width = max(1, round(hi - lo))
    return int(min(255, max(0, round((lo + hi) / 2)))), int(min(255, width))


def window_presets(image: np.ndarray) -> dict[str, tuple[int, int]]:
    """``name -> (level, width)`` for :data:`WINDOW_PRESETS` on this slice (uint8 grey)."""
    from sslmri_core.explain.cam_stats import brain_mask

    img = np.asarray(image, dtype=np.float32)
    head = brain_mask(np.asarray(image, np.uint8))
    inside = img[head] if head.sum() >= 16 else img.ravel()
    return {"Full range": (128, 255), "Brain": _window(*np.percentile(inside, [5, 99.5])),
            "Auto": _window(*np.percentile(img, [1, 99]))}


def cam_readings(row: Mapping[str, Any], image: np.ndarray, cam: np.ndarray | None) -> pd.DataFrame:
    """A stored CAM-statistics row as the report prints it (:func:`sslmri_core.explain.report.stored_stat_lines`):
    one line per statistic with its value, the reference it must beat and what it says.

    A row stored before ``head_area`` was gets the head's share of ``image`` measured at the map's size (the
    model's input size, where ``in_brain`` was measured: the head mask changes with resolution)."""
    head = row.get("head_area")
    if (head is None or pd.isna(head)) and cam is not None:
        from sslmri_core.explain.cam_stats import brain_mask

        head = float(brain_mask(resize_grey(image, cam.shape[0])).mean())
    lines = stored_stat_lines(row, head)
    return pd.DataFrame([line._asdict() for line in lines], columns=["name", "value", "reference", "meaning"]).rename(
        columns={"name": "statistic", "meaning": "what it says"})


def report_pdf(*, image: np.ndarray, cam: np.ndarray | None, pred: Mapping[str, Any], probs: dict[str, float],
               decision: Any, decision_note: str, model: dict[str, str], stats: pd.DataFrame, cam_source: str,
               label: str, window: tuple[float, float], opacity: float, colormap: str, threshold: float,
               method: str) -> bytes:
    """The PDF of what the page shows (:func:`sslmri_core.explain.report.render_report`); torch-free."""
    from sslmri_core.config import OverlayConfig
    from sslmri_core.explain.report import ReportContent, StatLine, render_report

    lines = [StatLine(*row) for row in stats[["statistic", "value", "reference", "what it says"]].itertuples(
        index=False)] if not stats.empty else []
    return render_report(ReportContent(
        image=image, cam=cam, pred_label=str(pred["pred_label"]), confidence=float(pred["confidence"]), probs=probs,
        decision=decision, decision_note=decision_note, model=model, cam_stats=lines, cam_source=cam_source,
        scan_label=label, window=window, overlay=OverlayConfig(opacity=opacity, colormap=colormap, threshold=threshold),
        method=method))


def load_model(url: str, run_id: int) -> Any:
    """The classifier of fine-tuning run ``run_id``: the run read through the read-only store, its checkpoint
    only under ``$SSLMRI_RUNS_ROOTS`` (imports torch: only on demand)."""
    from sslmri_core.explain.cam import load_model_for_run

    return load_model_for_run(url, run_id)


def predict_with_cam(loaded: Any, image: np.ndarray, method: str = "gradcam") -> Any:
    """Prediction and CAM of one image with a model from :func:`load_model` (imports torch: only on demand)."""
    from sslmri_core.explain.cam import explain_image

    return explain_image(loaded, image, method=method)
