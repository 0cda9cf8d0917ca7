"""A one-page PDF of one scan that a clinician can file (``cli.py report``; the dashboard reuses it).

:class:`ReportContent` holds everything the page shows; :func:`render_report` draws it (matplotlib's
``Figure`` with its PDF backend, never pyplot, so nothing global changes in a Streamlit process);
:func:`gather_report` collects it from the read-only store and computes the prediction and CAM now
(torch is imported inside that call only). What is never on the page: a DICOM header value, a
subject id, or a file name from outside the run's data folder (a scan is named by its path inside
that folder, the store's key; an image from elsewhere is not named at all).
"""

from __future__ import annotations

import io
import math
import os
import tempfile
import textwrap
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from sslmri_core.config import OverlayConfig, ReportConfig
from sslmri_core.errors import UsageError

if TYPE_CHECKING:
    from sslmri_core.evaluation.metrics import PatientDecision

DISCLAIMER = "Research tool, not a medical device: not for diagnosis."
NOT_IN_DATA = "no patient-level decision: this scan is not in the run's data"
OUTSIDE_DATA = "an image outside the run's data folder (its file name is not shown)"
PDF_METADATA = {"Title": "sslmri scan report", "Creator": "sslmri", "CreationDate": None}  # no date: reproducible
A4_INCHES = (8.27, 11.69)


class StatLine(NamedTuple):
    """One CAM statistic as shown: its value, what to compare it with, and what it means (all display text)."""

    name: str
    value: str
    reference: str
    meaning: str


@dataclass
class ReportContent:
    """Everything the page shows. ``image``: uint8 ``(S, S)`` before windowing; ``cam``: float ``(S', S')``
    in [0, 1] (resized to the image, bilinear, when drawn) or None; ``window``: (low, high) in 0-255 units."""

    image: np.ndarray
    cam: np.ndarray | None
    pred_label: str
    confidence: float
    probs: dict[str, float]  # class -> probability of this slice, in the model's class order
    decision: PatientDecision | None
    decision_note: str  # where the decision comes from, or why there is none
    model: dict[str, str]  # label -> value, in display order (run id, arm, data folder, date, git sha, ...)
    cam_stats: list[StatLine]
    cam_source: str  # stored by which gradcam run, or computed now for this scan
    scan_label: str  # the scan's path inside the run's data folder, or OUTSIDE_DATA
    window: tuple[float, float] = (0.0, 255.0)
    overlay: OverlayConfig = field(default_factory=OverlayConfig)
    method: str = "gradcam"
    target_label: str | None = None  # the class the map explains (None: the predicted one)


# -- formatting ---------------------------------------------------------------------------------------
def _pct(x: Any) -> str:
    return "n/a" if x is None or not math.isfinite(float(x)) else f"{100 * float(x):.1f}%"


def _num(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None or not math.isfinite(float(x)) else f"{float(x):.{digits}f}"


def _clip(text: str, n: int) -> str:
    """``text`` at most ``n`` characters, cut in the middle (a path keeps its start and its end)."""
    return text if len(text) <= n else text[: n // 2 - 1] + "..." + text[-(n - n // 2 - 2):]


def _present(row: Mapping[str, Any], key: str) -> bool:
    value = row.get(key)
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def stored_stat_lines(row: Mapping[str, Any], head_share: float | None) -> list[StatLine]:
    """The statistics of a stored ``cam_stats`` row, each beside its reference; columns a store lacks are skipped.
    ``head_share`` is the in-head reference for rows stored before ``head_area`` was (measured on the shown image)."""
    lines = []
    if _present(row, "deletion_drop"):
        refs = [f"random region in the head {_pct(row['random_drop'])}" if _present(row, "random_drop") else "",
                f"head-centre region {_pct(row['baseline_drop'])}" if _present(row, "baseline_drop") else ""]
        lines.append(StatLine("Deletion drop", _pct(row["deletion_drop"]), "; ".join(r for r in refs if r) or "n/a",
                              "confidence lost when the map's top region is blurred out; a faithful map beats both "
                              "references (same pixel count)"))
    if _present(row, "pointing_hit"):
        chance = f"chance {_pct(row['pointing_chance'])}" if _present(row, "pointing_chance") else "chance n/a"
        lines.append(StatLine("Pointing game", "hit" if bool(row["pointing_hit"]) else "miss", chance,
                              "is the map's peak inside the lesion mask (dilated)? chance: a random point in the head"))
    if _present(row, "lesion_energy"):
        area = f"lesion area {_pct(row['lesion_area'])}" if _present(row, "lesion_area") else "lesion area n/a"
        lines.append(StatLine("Lesion energy", _pct(row["lesion_energy"]), area,
                              "share of the map's activation inside the lesion mask; a map blind to anatomy scores "
                              "the lesion's area"))
    if _present(row, "in_brain"):
        head = row["head_area"] if _present(row, "head_area") else head_share  # stored at the map's own size
        lines.append(StatLine("In-head energy", _pct(row["in_brain"]), f"head area {_pct(head)}",
                              "share of the map's activation inside the head; a map blind to anatomy scores the "
                              "head's area"))
    if _present(row, "road"):
        lines.append(StatLine("ROAD", _num(row["road"]), "0: no better than removing the least relevant pixels",
                              "confidence change, least- minus most-relevant pixels removed (higher is better)"))
    if _present(row, "area_pct"):
        lines.append(StatLine("Activation area", f"{float(row['area_pct']):.1f}%",
                              f"at threshold {_num(row.get('threshold'), 2)}", "share of the image the map covers"))
    return lines


def computed_stat_lines(cam: np.ndarray, head: np.ndarray, raw_max: float, raw_mean: float,
                        threshold: float) -> list[StatLine]:
    """Statistics computed now for one map ``(S, S)`` and its head mask (no model pass beyond the CAM's)."""
    from sslmri_core.explain.cam_stats import area_pct, energy_share

    head_share = float(head.mean()) if head.size else None
    return [
        StatLine("In-head energy", _pct(energy_share(cam, head)), f"head area {_pct(head_share)}",
                 "share of the map's activation inside the head; a map blind to anatomy scores the head's area"),
        StatLine("Activation area", f"{area_pct(cam, threshold):.1f}%", f"at threshold {threshold:.2f}",
                 "share of the image the map covers"),
        StatLine("Raw map max / mean", f"{raw_max:.3g} / {raw_mean:.3g}", "this model's other scans",
                 "before per-scan scaling; comparable only between scans of one model and layer"),
    ]


# -- the page -----------------------------------------------------------------------------------------
def _fit(cam: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The map at the image's size, bilinear (a coarse map is smooth, never blocks)."""
    from PIL import Image

    cam = np.asarray(cam, dtype=np.float32)
    if cam.shape == shape:
        return cam
    resized = Image.fromarray(cam, mode="F").resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def _heading(fig: Any, x: float, y: float, text: str) -> float:
    fig.text(x, y, text, fontsize=10.5, fontweight="bold", va="top")
    return y - 0.022


def _lines(fig: Any, x: float, y: float, lines: Sequence[str], size: float = 8.5, step: float = 0.0155,
           **kw: Any) -> float:
    for line in lines:
        fig.text(x, y, line, fontsize=size, va="top", **kw)
        y -= step
    return y


def _decision_lines(content: ReportContent) -> list[str]:
    d = content.decision
    if d is None:
        return textwrap.wrap(content.decision_note, 52)
    votes = ", ".join(f"{k} {v}" for k, v in d.votes.items())
    return [f"{d.label}  (mean probability {_pct(d.confidence)})", *textwrap.wrap(content.decision_note, 52),
            f"slice votes (shown, not used): {votes}"]


def render_report(content: ReportContent) -> bytes:
    """The one-page A4 PDF of ``content`` (bytes); metadata: a title and the creator, nothing about the patient."""
    buf = io.BytesIO()
    draw_report(content).savefig(buf, format="pdf", metadata=dict(PDF_METADATA))
    return buf.getvalue()


def draw_report(content: ReportContent) -> Any:
    """The page as a matplotlib ``Figure`` (A4 portrait), not attached to pyplot (e.g. for a PNG preview)."""
    from matplotlib.colorbar import ColorbarBase
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    from sslmri_core.explain.overlay import render_overlay

    lo, hi = content.window
    ov = content.overlay
    image = np.asarray(content.image)
    fig = Figure(figsize=A4_INCHES)
    fig.text(0.06, 0.972, "sslmri scan report", fontsize=15, fontweight="bold", va="top")
    fig.text(0.06, 0.945, DISCLAIMER, fontsize=10, fontweight="bold", color="#a00000", va="top")

    left = fig.add_axes((0.06, 0.61, 0.42, 0.30))
    grey = np.clip((image.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)  # the window render_overlay applies
    left.imshow(grey, cmap="gray", vmin=0.0, vmax=1.0, interpolation="bilinear")
    left.set_title(f"Scan (window {lo:g}-{hi:g})", fontsize=9)
    right = fig.add_axes((0.52, 0.61, 0.42, 0.30))
    if content.cam is not None:
        rgb = render_overlay(image, _fit(content.cam, image.shape), opacity=ov.opacity, colormap=ov.colormap,
                             threshold=ov.threshold, window=(lo, hi))
        right.imshow(rgb, interpolation="bilinear")
        target = content.target_label or content.pred_label
        right.set_title(f"{content.method} for '{target}' (opacity {ov.opacity:g}, threshold {ov.threshold:g})",
                        fontsize=9)
        bar = fig.add_axes((0.52, 0.598, 0.42, 0.008))
        ColorbarBase(bar, cmap=_cmap(ov.colormap), norm=Normalize(0, 1), orientation="horizontal")
        bar.tick_params(labelsize=6, length=2)
    else:
        right.text(0.5, 0.5, "no Grad-CAM map", ha="center", va="center", fontsize=10, transform=right.transAxes)
    for ax in (left, right):
        ax.set_xticks([])
        ax.set_yticks([])
    fig.text(0.06, 0.575, f"Scan: {_clip(content.scan_label, 110)}", fontsize=8.5, va="top")

    y = _heading(fig, 0.06, 0.545, "Prediction (this slice)")
    y = _lines(fig, 0.06, y, [f"{content.pred_label}  ({_pct(content.confidence)})"], size=10, fontweight="bold")
    ranked = sorted(content.probs.items(), key=lambda kv: -kv[1])
    shown = [f"{_clip(c, 34)}: {_pct(p)}" for c, p in ranked[:10]]
    if len(ranked) > 10:
        shown.append(f"... and {len(ranked) - 10} more classes")
    y_left = _lines(fig, 0.07, y - 0.004, ["Class probabilities:", *shown])

    y = _heading(fig, 0.52, 0.545, "Patient-level decision")
    y_right = _lines(fig, 0.52, y, _decision_lines(content))

    y = _heading(fig, 0.06, min(y_left, y_right) - 0.012, "Model")
    rows = [f"{k}: {_clip(v, 100)}" for k, v in content.model.items()]
    y = _lines(fig, 0.07, y, rows)

    y = _heading(fig, 0.06, y - 0.012, "Grad-CAM statistics")
    y = _lines(fig, 0.07, y, textwrap.wrap(content.cam_source, 120), size=8, color="#333333")
    for stat in content.cam_stats[:8]:
        y = _lines(fig, 0.07, y - 0.003, [f"{stat.name}: {stat.value}    (reference: {stat.reference})"])
        y = _lines(fig, 0.09, y + 0.002, textwrap.wrap(stat.meaning, 125)[:2], size=7, step=0.012, color="#555555")
    if not content.cam_stats:
        _lines(fig, 0.07, y, ["none"])

    fig.text(0.06, 0.035, DISCLAIMER + " No patient identifiers: the scan is named by its path inside the run's data "
             "folder; no DICOM header value is shown.", fontsize=7, color="#444444", va="top", wrap=True)
    return fig


def _cmap(name: str) -> Any:
    import matplotlib

    return matplotlib.colormaps[name]


# -- collecting the content ---------------------------------------------------------------------------
def split_key(scan: str) -> tuple[str, int | None]:
    """``path#z=k`` -> (path, k); a plain path -> (path, None) (the data layer's rule)."""
    from sslmri_core.data.scans import split_key as data_split_key

    return data_split_key(scan)


def read_scan(key: str, size: int, preprocess: str = "none") -> np.ndarray:
    """The scan a key names (an image, a DICOM file, ``path#z=k`` for a NIfTI slice or DICOM frame) decoded as
    training decodes it, uint8 ``(size, size)``: the one place a report decodes a file."""
    from sslmri_core.data.decode import DecodeError
    from sslmri_core.data.scans import read_scan as data_read_scan

    path = split_key(key)[0]
    if not Path(path).is_file():
        raise UsageError(f"--scan: no such file: {path}")
    try:
        return data_read_scan(key, size, preprocess)
    except DecodeError as exc:
        raise DecodeError(f"--scan: {exc}") from None


def _stored_key(scan: str, keys: set[str]) -> str | None:
    """The stored prediction key ``scan`` names (as given, absolute, or with links resolved), if any."""
    path, z = split_key(scan)
    suffix = "" if z is None else f"#z={z}"
    for candidate in (scan, os.path.abspath(path) + suffix, str(Path(path).expanduser().resolve()) + suffix):
        if candidate in keys:
            return candidate
    return None


def scan_label(key: str | None, roots: list[str]) -> str:
    """The store's key relative to the run's data folder; never a path from elsewhere."""
    if key is None:
        return OUTSIDE_DATA
    path, z = split_key(key)
    resolved = Path(path).resolve()
    for root in roots:
        real = Path(root).expanduser().resolve()
        if resolved.is_relative_to(real):
            return str(resolved.relative_to(real)) + ("" if z is None else f" (slice z={z})")
    return OUTSIDE_DATA


def model_facts(record: Any, params: Mapping[str, Any], roots: list[str], *, image_size: int | None = None,
                classes: Sequence[str] = (), target_layer: str | None = None) -> dict[str, str]:
    """What the page says about the model (run, arm, task, model, data folder, date, git sha, CAM layer);
    the CLI passes the loaded model's facts, the dashboard the run's stored ones."""
    from sslmri_core.store.queries import derive_arm

    cfg = record.config or {}
    when = record.ended_at or record.created_at
    size = image_size or cfg.get("image_size")
    facts = {
        "Run": f"{record.id} ({record.kind}, {record.status})",
        "Arm": str(params.get("arm") or derive_arm(cfg.get("init"), cfg.get("mode"))),
        "Task": str(record.task or "?"),
        "Model": f"{cfg.get('model', '?')}" + (f" at {size} px" if size else "")
        + (f", classes {', '.join(classes)}" if classes else ""),
        "Data folder": roots[0] if roots else "not recorded",
        "Trained": when.strftime("%Y-%m-%d %H:%M %Z").strip() if when else "?",
        "Git sha": record.git_sha or "not recorded",
    }
    if target_layer:
        facts["Grad-CAM layer"] = target_layer
    return facts


def _decision(frame: Any, key: str | None, classes: list[str], run_id: int) -> tuple[Any, str]:
    """The patient-level decision from the subject's stored predictions of the scan's split, or a reason."""
    from sslmri_core.evaluation.metrics import patient_decision

    if key is None:
        return None, NOT_IN_DATA
    row = frame[frame["scan"] == key].iloc[0]
    if row["subject"] is None or (isinstance(row["subject"], float) and math.isnan(row["subject"])):
        # its own patient, as the subject-level metrics count an image without a subject id
        probs = np.array([list(row["probs"])], dtype=np.float64)
        return patient_decision(probs, classes), "this image has no subject id: it is its own patient"
    same = frame[(frame["subject"] == row["subject"]) & (frame["split"] == row["split"])]
    probs = np.array([list(p) for p in same["probs"]], dtype=np.float64)
    return patient_decision(probs, classes), (f"mean of the stored probabilities of this subject's {len(same)} "
                                              f"{row['split']} slice(s), run {run_id}")


def gather_report(
    db_url: str | None,
    run_id: int,
    scan: str,
    *,
    window: tuple[float, float] = (0.0, 255.0),
    method: str | None = None,
    overlay: OverlayConfig | None = None,
    precision: str | None = None,
    display_size: int | None = None,
    image: np.ndarray | None = None,
    loaded: Any = None,
    file_rule: Callable[..., Any] | None = None,
) -> ReportContent:
    """The page's content for ``scan`` (a stored key or an image file) read by fine-tuning run ``run_id``.

    The store is read only through :mod:`sslmri_core.store.queries`; the prediction and map are computed
    now (torch imported here). ``image`` (uint8 ``(S, S)``, already read) and ``loaded`` (a
    :class:`~sslmri_core.explain.cam.LoadedModel`) let the dashboard reuse what it holds; ``file_rule``
    opens the checkpoint (default :func:`sslmri_core.paths.run_file`: the run's own folder, the CLI's rule).
    """
    from sslmri_core.explain.cam import explain_image, load_model_for_run, prepare_image
    from sslmri_core.explain.cam_stats import brain_mask
    from sslmri_core.paths import run_file
    from sslmri_core.store import queries

    defaults = ReportConfig()
    method, overlay = method or defaults.method, overlay or defaults.overlay
    detail = queries.run_detail(db_url, run_id)
    if detail is None:
        raise UsageError(f"--run {run_id}: no such run in the store (python cli.py runs list --kind finetune)")
    if detail.run.kind != "finetune":
        raise UsageError(f"--run {run_id} is a {detail.run.kind} run; a report shows a fine-tuning run's model")
    if image is None:
        path = split_key(scan)[0]
        if not Path(path).is_file():
            raise UsageError(f"--scan: no such file: {path}")
    frame = queries.predictions_frame(db_url, run_id)
    key = _stored_key(scan, set(frame["scan"]))
    stored = queries.cam_stats_frame(db_url, run_id, scan=key) if key is not None else None
    row = None
    if stored is not None and len(stored):
        mine = stored[stored["method"] == method]
        row = mine.sort_values("gradcam_run_id").iloc[-1].to_dict() if len(mine) else None
    layer = None
    if row is not None:
        cam_run = queries.run_detail(db_url, int(row["gradcam_run_id"]))
        layer = (cam_run.params.get("target_layer") if cam_run else None) or None
    loaded = loaded or load_model_for_run(db_url, run_id, precision=precision or defaults.precision,
                                          target_layer=layer, file_rule=file_rule or run_file)
    model_image = read_scan(key or scan, loaded.image_size, loaded.preprocess) if image is None else image
    explained = explain_image(loaded, model_image, method=method)
    size = display_size or defaults.display_size
    if image is not None:
        shown = prepare_image(image, size)
    else:
        shown = explained.image_u8 if size == loaded.image_size else read_scan(key or scan, size, loaded.preprocess)
    head = brain_mask(explained.image_u8)
    if row is not None:
        stats = stored_stat_lines(row, float(head.mean()))
        source = (f"Stored by gradcam run {row['gradcam_run_id']} ({method}, {row.get('split')} split, layer "
                  f"{layer or '?'}) for this scan; the map drawn is computed now ({method}, layer "
                  f"{loaded.target_layer}).")
    else:
        stats = computed_stat_lines(explained.cam, head, explained.raw_max, explained.raw_mean, overlay.threshold)
        source = (f"Computed now for this scan ({method}); no gradcam run of this model stored statistics for it, "
                  "so the faithfulness checks (deletion drop, pointing game) are not shown.")
    decision, note = _decision(frame, key, loaded.classes, run_id)
    roots = queries.run_data_roots(db_url, run_id)
    return ReportContent(
        image=shown, cam=explained.cam, pred_label=explained.pred_label, confidence=explained.confidence,
        probs=explained.probs, decision=decision, decision_note=note,
        model=model_facts(detail.run, detail.params, roots, image_size=loaded.image_size, classes=loaded.classes,
                          target_layer=loaded.target_layer),
        cam_stats=stats, cam_source=source,
        scan_label=scan_label(key, roots), window=window, overlay=overlay, method=method,
        target_label=explained.target_label,
    )


# -- the command --------------------------------------------------------------------------------------
def parse_window(text: str | None) -> list[float] | None:
    """``'LO,HI'`` -> ``[lo, hi]`` with ``0 <= lo < hi <= 255``; None stays None (the default)."""
    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--window must be LO,HI (two numbers, e.g. 20,200), got {text!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 <= lo < hi <= 255.0):
        raise UsageError(f"--window must be LO,HI with 0 <= LO < HI <= 255, got {text!r}")
    return [lo, hi]


def check_out(out: Path) -> None:
    """Refuse (one line) an output that is not a new .pdf in an existing, writable folder."""
    if out.suffix.lower() != ".pdf":
        raise UsageError(f"--out must name a .pdf file, got {out}")
    if out.exists() or out.is_symlink():
        raise UsageError(f"--out {out} already exists: a report never overwrites a file (choose another name)")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError(f"--out: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"--out: the folder {folder} is not writable")


def write_new_file(out: Path, data: bytes) -> None:
    """Write ``data`` to ``out`` atomically (a temporary file in the same folder, then linked into place);
    a file that appeared at ``out`` meanwhile is refused, never replaced."""
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part")
    try:
        umask = os.umask(0)  # mkstemp makes the file 0600; the report gets the user's usual mode
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, out)  # atomic, and fails when the name exists
        except FileExistsError:
            raise UsageError(f"--out {out} already exists: a report never overwrites a file") from None
        except OSError:  # a file system without hard links: the name was checked just now
            if out.exists():
                raise UsageError(f"--out {out} already exists: a report never overwrites a file") from None
            os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def report_command(*, run: int, scan: str, out: Path, window: str | None, method: str | None, overlay: str | None,
                   db: str | None, json_out: bool) -> None:
    """``report``: check every option first, gather the content, render it and write the PDF."""
    from sslmri_core.config import check_values, parse_settings, with_overrides
    from sslmri_core.explain.cam import check_method
    from sslmri_core.explain.overlay import apply_colormap
    from sslmri_core.output import print_json
    from sslmri_core.progress import console

    defaults = ReportConfig()
    cfg = with_overrides(defaults, run=run, scan=scan, out=str(out), window=parse_window(window), method=method,
                         overlay=parse_settings(defaults.overlay, overlay, "--overlay") if overlay else None)
    check_values(cfg)
    check_method(cfg.method)
    apply_colormap(np.zeros(1), cfg.overlay.colormap)  # an unknown colormap: one line, before the model loads
    check_out(out)
    t0 = time.perf_counter()
    content = gather_report(db, run, scan, window=(cfg.window[0], cfg.window[1]), method=cfg.method,
                            overlay=cfg.overlay, precision=cfg.precision, display_size=cfg.display_size)
    data = render_report(content)
    write_new_file(out, data)
    seconds = time.perf_counter() - t0
    console.print(f"report written to {out} ({len(data) // 1024} KiB, {seconds:.1f} s)")
    if json_out:
        d = content.decision
        print_json({"run_id": run, "out": str(out), "scan": content.scan_label, "pred_label": content.pred_label,
                    "confidence": content.confidence, "patient_decision": d.label if d else None,
                    "cam_source": "stored" if content.cam_source.startswith("Stored") else "computed",
                    "bytes": len(data), "seconds": round(seconds, 3)})
