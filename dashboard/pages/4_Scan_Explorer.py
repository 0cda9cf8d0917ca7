"""Scan Explorer: one patient's decision, the slice predictions along the slice axis, and one slice up close.

Pick task -> model (a fine-tuning run) -> subject: the patient-level decision comes first, then a strip of
every slice's prediction in order along the slice axis (click a bar to show that slice), then the slice as a
zoomable image with the Grad-CAM overlay, its probabilities and the CAM statistics beside their references.
A second model can be compared on the same slice, the view downloaded as a PDF, and a scan uploaded.
"""

from __future__ import annotations

import json
import re
from functools import partial
from typing import Any

import common
import numpy as np
import pandas as pd
import scan_figures
import scan_tools
import streamlit as st

from sslmri_core.config import CAM_METHODS
from sslmri_core.evaluation.metrics import PatientDecision, patient_decision
from sslmri_core.explain.report import model_facts, scan_label

SLICE_KEY = "scan_slice"
STRIP_KEY = "strip"
NO_SUBJECT = "(no subject id) "  # + the scan key: such an image is its own patient, as the subject metrics count it
HOW_TO = ("**How to read this page:** ① pick a patient (*Subject*) → ② read the patient-level decision → "
          "③ the strip shows every slice's prediction in order along the slice axis: click a bar, or press ← / →, "
          "to move → ④ on the image, drag to zoom, double-click to reset, hover for the grey value and the map "
          "value; window presets and the overlay are in the sidebar.")
RAW_CAM_COLUMNS = ["method", "target_label", "confidence", "intensity", "area_pct", "in_brain", "head_area",
                   "raw_max", "raw_mean", "deletion_drop", "random_drop", "baseline_drop", "road", "pointing_hit",
                   "pointing_chance", "lesion_energy", "lesion_area"]


def run_choice(row: pd.Series) -> str:
    seed = "" if pd.isna(row["seed"]) else f" · seed {row['seed']}"
    return f"#{row['id']} · {row['arm']} · {common.fraction_label(row['fraction'])} labels{seed} · {row['model']}"


def step_slice(options: list[str], delta: int) -> None:
    current = st.session_state.get(SLICE_KEY)
    i = options.index(current) if current in options else 0
    st.session_state[SLICE_KEY] = options[(i + delta) % len(options)]


def pick_from_strip(options: list[str]) -> None:
    """The strip's click callback: show the clicked slice."""
    order = scan_figures.selected_order(st.session_state.get(STRIP_KEY))
    if order is not None and 1 <= order <= len(options):
        st.session_state[SLICE_KEY] = options[order - 1]


def plain(note: str) -> str:
    """A note written as escaped markdown, as plain text (for the PDF)."""
    return re.sub(r"\\(.)", r"\1", note).replace("`", "")


def set_window(level: int, width: int) -> None:
    st.session_state["level"], st.session_state["width"] = level, width


@st.cache_data(ttl=common.CACHE_TTL_S, show_spinner=False)
def run_classes(url: str, run_id: int) -> list[str]:
    detail = common.run_detail(url, run_id)
    raw = detail.params.get("classes") if detail else None
    try:
        return [str(c) for c in json.loads(raw)] if raw else []
    except ValueError:
        return []


@st.cache_data(max_entries=64, show_spinner=False)
def scan_view(key: str, roots: tuple[str, ...], preprocess: str) -> tuple[np.ndarray, dict[str, tuple[int, int]]]:
    """The slice at the viewer's size, prepared as the model's training was, and its window presets (cached:
    stepping back is instant)."""
    image = scan_tools.load_scan(key, list(roots), preprocess=preprocess)
    return image, scan_tools.window_presets(image)


@st.cache_resource(show_spinner="Loading the model…", max_entries=4)
def loaded_model(url: str, run_id: int) -> Any:
    return scan_tools.load_model(url, run_id)  # imports torch: on-demand Grad-CAM only


def class_names(url: str, run_id: int, n: int) -> list[str]:
    classes = run_classes(url, run_id)
    return classes if len(classes) == n else [f"class {i}" for i in range(n)]


def probability_table(classes: list[str], probs: list[float], true_label: str | None = None) -> pd.DataFrame:
    names = classes if len(classes) == len(probs) else [f"class {i}" for i in range(len(probs))]
    frame = pd.DataFrame({"class": names, "probability": [float(p) for p in probs]})
    if true_label is not None:
        frame["true"] = frame["class"] == true_label
    return frame.sort_values("probability", ascending=False)


def show_probabilities(frame: pd.DataFrame, key: str) -> None:
    st.dataframe(frame, hide_index=True, key=key, column_config={
        "probability": st.column_config.ProgressColumn("probability", min_value=0.0, max_value=1.0, format="%.3f"),
        "true": st.column_config.CheckboxColumn("true class"),
    })


def cam_for(url: str, run_id: int, scan: str, method: str) -> tuple[np.ndarray | None, pd.DataFrame, str]:
    """The stored CAM of ``scan`` under ``method`` (at its own size), its stored statistics, and a note."""
    stats = common.cam_stats(url, run_id)
    rows = stats[stats["scan"] == scan] if not stats.empty else stats
    chosen = rows[rows["method"] == method] if not rows.empty else rows
    if not chosen.empty and isinstance(chosen.iloc[-1]["heatmap_path"], str):
        last = chosen.iloc[-1]
        try:
            return scan_tools.load_heatmap(last["out_dir"], last["heatmap_path"]), chosen, (
                f"stored {common.md(method)} heat map of Grad-CAM run #{last['gradcam_run_id']}")
        except Exception as exc:  # a moved or unsafe file: say so, fall through to on-demand
            note = f"stored heat map not readable ({common.md(exc)})"
    else:
        note = f"no stored {common.md(method)} heat map for this scan"
    if not st.session_state.get("on_demand", True):
        hint = " · run `python cli.py gradcam --run ID` to store them" if "no stored" in note else ""
        return None, chosen, note + hint
    return None, chosen, note


def run_preprocess(url: str, run_id: int) -> str:
    """How run ``run_id`` prepared its images (``--preprocess``; "none" for runs from before it existed)."""
    detail = common.run_detail(url, run_id)
    return str((detail.run.config.get("preprocess") if detail else None) or "none")


def on_demand(url: str, run_id: int, image: np.ndarray, method: str) -> tuple[Any | None, str]:
    """Compute prediction + CAM now with ``sslmri_core.explain.cam`` (the page's only use of torch); (None, why)
    when that is not possible (``why`` is markdown)."""
    try:
        return scan_tools.predict_with_cam(loaded_model(url, run_id), image, method), ""
    except Exception as exc:
        return None, f"could not compute Grad-CAM: {common.md(f'{exc.__class__.__name__}: {exc}')}"


def patient_name(subject: str) -> str:
    """A subject id, or for an image without one, ``(no subject id) <class folder>/<file>``."""
    if not subject.startswith(NO_SUBJECT):
        return subject
    path = scan_tools.split_key(subject[len(NO_SUBJECT):])[0].replace("\\", "/").split("/")
    return NO_SUBJECT + "/".join(path[-2:])


def show_decision(subject: str, rows: pd.DataFrame, classes: list[str], split: str) -> PatientDecision:
    """The patient-level decision of ``subject`` (every slice of it in the split), where the eye lands first."""
    probs = np.array([list(p) for p in rows["probs"]], dtype=np.float64)
    decision = patient_decision(probs, classes)
    truths = rows["true_label"].dropna().unique()
    if len(truths) == 1:
        verdict = (":green[**correct**]" if decision.label == truths[0] else ":red[**wrong**]") + \
            f" — true class {common.md(truths[0])}"
    else:
        verdict = "true class: not one label for this subject"
    votes = ", ".join(f"{common.md(label)} {n}" for label, n in decision.votes.items())
    with st.container(border=True):
        st.markdown(f"#### Patient {common.md(patient_name(subject))}: **{common.md(decision.label)}** · confidence "
                    f"{decision.confidence:.0%}")
        st.markdown(f"{verdict} · decided from {decision.n_slices} {common.md(split)} slices · slices predicting each "
                    f"class: {votes}")
        st.caption("The decision is the class with the highest mean slice probability (how subject-level metrics are "
                   "computed); confidence is that mean. Slice votes are shown, not used.")
    return decision


def show_model(url: str, run_id: int, pred: pd.Series | None, image: np.ndarray | None, controls: dict[str, Any],
               key: str) -> dict[str, Any] | None:
    """One model's view of the slice: prediction, the zoomable overlay, probabilities, CAM statistics beside their
    references. Returns what was shown (for the report), None when nothing was."""
    if pred is None:
        st.info(f"Run #{run_id} has no prediction for this scan (it was in another split for that run).")
        return None
    right = pred["pred_label"] == pred["true_label"]
    verdict = ":green[correct]" if right else f":red[**wrong** — true class: {common.md(pred['true_label'])}]"
    st.markdown(f"**Prediction: {common.md(pred['pred_label'])}** — confidence {pred['confidence']:.1%} · {verdict}")
    if image is None:
        return None
    cam, stats, note = cam_for(url, run_id, pred["scan"], controls["method"])
    if cam is None and controls["on_demand"]:
        result, why = on_demand(url, run_id, image, controls["method"])
        if result is not None:
            cam, note = np.asarray(result.cam, dtype=np.float32), f"{controls['method']} computed now"
        elif why:
            note = f"{note}; {why}"
    shown = scan_tools.resize_cam(cam, image.shape[0]) if cam is not None else None  # one bilinear path
    rgb = scan_tools.overlay(image, shown if controls["show_cam"] else None, opacity=controls["opacity"],
                             colormap=controls["colormap"], threshold=controls["threshold"], level=controls["level"],
                             width=controls["width"])
    picture, numbers = st.columns([3, 2]) if not controls["narrow"] else (st.container(), st.container())
    with picture:
        px = scan_figures.COMPARE_PX if controls["narrow"] else scan_tools.VIEW_PX  # fixed: never autosized
        fig = scan_figures.image_figure(rgb, image, shown, px=px, dragmode=controls["dragmode"],
                                        revision=f"{run_id}·{controls['subject']}")
        st.plotly_chart(fig, key=f"view-{key}", width=px, theme=None,
                        config=scan_figures.IMAGE_CONFIG)
        st.caption(f"run #{run_id} · {note}")
    classes = class_names(url, run_id, len(pred["probs"]))
    with numbers:
        show_probabilities(probability_table(classes, list(pred["probs"]), pred["true_label"]), key=f"probs-{key}")
        readings = scan_tools.cam_readings(stats.iloc[-1].to_dict(), image, cam) if not stats.empty else pd.DataFrame()
        if not readings.empty:
            st.caption("Stored Grad-CAM statistics, each beside the reference it must beat:")
            st.table(readings, hide_index=True, border="horizontal")  # wraps: a reference is never cut off
            with st.expander("All stored statistics of this scan"):
                st.dataframe(stats[[c for c in RAW_CAM_COLUMNS if c in stats]], hide_index=True, key=f"camraw-{key}")
        else:
            st.caption("No stored Grad-CAM statistics for this scan under this method "
                       "(`python cli.py gradcam --run ID` stores them).")
    return {"cam": cam if controls["show_cam"] else None, "stats": readings, "note": note, "classes": classes}


def report_button(url: str, run_id: int, pred: pd.Series, image: np.ndarray, shown: dict[str, Any],
                  decision: PatientDecision,
                  note: str, roots: list[str], controls: dict[str, Any]) -> None:
    """Download the PDF of what is shown (built on click; the file name carries the run id only)."""
    lo, hi = (controls["level"] - controls["width"] / 2, controls["level"] + controls["width"] / 2)
    detail = common.run_detail(url, run_id)
    model = model_facts(detail.run, detail.params, roots, classes=shown["classes"]) if detail else {"Run": f"#{run_id}"}
    build = partial(scan_tools.report_pdf, image=image, cam=shown["cam"], pred=pred.to_dict(),
                    probs=dict(zip(shown["classes"], map(float, pred["probs"]), strict=False)), decision=decision,
                    decision_note=note, model=model, stats=shown["stats"], cam_source=plain(shown["note"]),
                    label=scan_label(str(pred["scan"]), roots), window=(max(lo, 0.0), min(hi, 255.0)),
                    opacity=controls["opacity"], colormap=controls["colormap"], threshold=controls["threshold"],
                    method=controls["method"])
    st.download_button("Download report (PDF)", data=build, file_name=f"sslmri-report-run{run_id}.pdf",
                       mime="application/pdf", key="report", on_click="ignore", icon=":material/download:",
                       help="A one-page PDF of this slice, its overlay, the patient decision and the statistics; "
                            "no patient name or file name in the file name.")


def show_upload(url: str, models: pd.DataFrame, controls: dict[str, Any]) -> None:
    st.subheader("Upload a slice")
    st.caption(f"PNG, JPEG, NIfTI (.nii, .nii.gz), a DICOM file (.dcm) or a zip of one DICOM series, up to "
               f"{scan_tools.MAX_UPLOAD_MB} MB. It is decoded in memory (a NIfTI volume in a temporary folder "
               "deleted at once) and never stored; DICOM slices are ordered by their position.")
    upload = st.file_uploader("Scan", type=scan_tools.UPLOAD_TYPES, key="upload",
                              max_upload_size=scan_tools.MAX_UPLOAD_MB)  # MB; the handler checks again
    if upload is None:
        scan_tools.forget_upload(st.session_state)
        return
    try:  # decoded once per file (kept in the session): sliders and reruns only pick a slice
        decoded = scan_tools.cached_upload(st.session_state, upload.name, upload.getvalue())
    except scan_tools.UploadError as exc:
        st.error(f"Cannot use this upload: {common.md(exc)}")
        return
    chosen = decoded.slice()
    if len(chosen.slice_indices) > 1:
        middle = chosen.slice_indices[len(chosen.slice_indices) // 2]
        z = st.select_slider(decoded.slice_label, chosen.slice_indices, value=middle)
        chosen = decoded.slice(int(z))
    names = {int(row["id"]): run_choice(row) for row in models.to_dict("records")}
    model = st.selectbox("Model", list(names), key="upload_model", format_func=lambda r: names.get(r, str(r)))
    left, right = st.columns(2)
    model_id = int(model if model is not None else next(iter(names)))
    shown = scan_tools.model_view(chosen.image, run_preprocess(url, model_id))  # what the model reads
    result, why = on_demand(url, model_id, shown, controls["method"])
    with left:
        cam = None if result is None or not controls["show_cam"] else np.asarray(result.cam, np.float32)
        rgb = scan_tools.overlay(shown, cam, opacity=controls["opacity"], colormap=controls["colormap"],
                                 threshold=controls["threshold"], level=controls["level"], width=controls["width"],
                                 size=scan_tools.VIEW_PX)
        st.image(rgb, caption=f"{common.md(chosen.name)} · {common.md(chosen.note)}", width=scan_tools.VIEW_PX)
    with right:
        if result is None:
            st.warning(f"No prediction: {why}")
        else:
            st.markdown(f"**Prediction: {common.md(result.pred_label)}** — confidence {result.confidence:.1%}")
            show_probabilities(pd.DataFrame({"class": list(result.probs), "probability": list(result.probs.values())})
                               .sort_values("probability", ascending=False), key="probs-upload")


url = common.setup_page("Scan Explorer", "🩻")
st.title("Scan Explorer")
st.caption(HOW_TO)
common.require_runs(url)

models = common.scan_runs(url)
if models.empty:
    common.empty_state("No fine-tuned model with per-scan predictions yet: fine-tuning stores one per val/test scan.",
                       "python cli.py finetune --from-run ID   # or: python cli.py demo")

# -- what to look at: ?run= opens that run, in its own task ---------------------------------------------------
wanted = common.query_run_id()
pick = st.columns([1, 3, 3])
tasks = sorted(models["task"].unique())
linked = models.loc[models["id"] == wanted, "task"]
task = pick[0].selectbox("Task", tasks, index=tasks.index(linked.iloc[0]) if len(linked) else 0, key="task")
task_models = models[models["task"] == task]
ids = task_models["id"].tolist()
names = {int(row["id"]): run_choice(row) for row in task_models.to_dict("records")}  # once, not per option
chosen_id = pick[1].selectbox("Model", ids, index=ids.index(wanted) if wanted in ids else 0, key="model",
                              format_func=lambda r: names.get(r, str(r)))
run_id = int(chosen_id if chosen_id is not None else ids[0])
others = [r for r in ids if r != run_id]
compare = pick[2].selectbox("Side by side with", [None, *others], key="compare",
                            format_func=lambda r: "(one model)" if r is None else names[r])

preds = common.predictions(url, run_id)
preds = preds.assign(subject=preds["subject"].where(preds["subject"].notna(), NO_SUBJECT + preds["scan"]))
filters = st.columns([1, 1, 2])
splits = sorted(preds["split"].unique())
split = filters[0].selectbox("Split", splits, index=splits.index("test") if "test" in splits else 0, key="split")
wrong_only = filters[1].toggle("Misclassified only", key="wrong_only", help="List only subjects with a wrong slice")
max_conf = filters[2].slider("Confidence at most", 0.0, 1.0, 1.0, 0.05, key="max_conf",
                             help="Lower it to list only subjects with a low-confidence slice")
in_split = preds[preds["split"] == split]
shown = in_split[in_split["confidence"] <= max_conf + 1e-9]
if wrong_only:
    shown = shown[~shown["correct"]]
if shown.empty:
    st.info("No scan matches these filters.")
    st.stop()

subjects = in_split[in_split["subject"].isin(shown["subject"])].groupby("subject").agg(
    n=("scan", "size"), wrong=("correct", lambda c: int((~c).sum())), label=("true_label", "first"))
subject = st.selectbox("Subject (patient)", sorted(subjects.index, key=scan_tools.natural_key), key="subject",
                       format_func=lambda s: f"{patient_name(s)} · {subjects.loc[s, 'label']} · "
                       f"{subjects.loc[s, 'n']} slice(s)"
                       + (f" · {subjects.loc[s, 'wrong']} wrong" if subjects.loc[s, "wrong"] else ""))
rows = in_split[in_split["subject"] == subject]
n_probs = len(rows["probs"].iloc[0])
decision = show_decision(subject, rows, class_names(url, run_id, n_probs), split)

# -- the slices along the slice axis ------------------------------------------------------------------------
ordered = scan_tools.slice_order(rows["scan"].tolist(), common.slice_positions(url, run_id))
scans = [s for s, _ in ordered]
if st.session_state.get(SLICE_KEY) not in scans:
    st.session_state[SLICE_KEY] = scans[0]
by_scan = rows.set_index("scan")
k = class_names(url, run_id, n_probs).index(decision.label)
strip = [{"scan": s, "name": s.rsplit("/", 1)[-1], "position": pos, "pred_label": by_scan.loc[s, "pred_label"],
          "confidence": float(by_scan.loc[s, "confidence"]), "p_decided": float(by_scan.loc[s, "probs"][k])}
         for s, pos in ordered]
st.plotly_chart(scan_figures.strip_figure(strip, class_names(url, run_id, n_probs), decision.label,
                                          st.session_state[SLICE_KEY]),
                key=STRIP_KEY, on_select=partial(pick_from_strip, scans), selection_mode="points", theme=None,
                config=scan_figures.STRIP_CONFIG)
nav = st.columns([4, 1, 1])
scan = nav[0].selectbox("Slice", scans, key=SLICE_KEY,
                        format_func=lambda p: f"{scans.index(p) + 1} of {len(scans)} · {p.rsplit('/', 1)[-1]}")
nav[1].button("◀ Previous", on_click=step_slice, args=(scans, -1), width="stretch", disabled=len(scans) < 2,
              shortcut="Left", help="Previous slice along the axis (keyboard: ←)")
nav[2].button("Next ▶", on_click=step_slice, args=(scans, 1), width="stretch", disabled=len(scans) < 2,
              shortcut="Right", help="Next slice along the axis (keyboard: →)")

# -- the slice and the display controls ---------------------------------------------------------------------
scan = str(scan)
roots = common.data_roots(url, run_id)
image: np.ndarray | None = None
presets: dict[str, tuple[int, int]] = {"Full range": (128, 255)}
try:
    image, presets = scan_view(scan, tuple(roots), run_preprocess(url, run_id))
except Exception as exc:  # outside the run's data folders, moved, unreadable: say which and why
    st.warning(f"Cannot show this scan: {common.md(exc)}")

st.session_state.setdefault("level", 128)
st.session_state.setdefault("width", 255)
tools = st.columns([1, 1, 1, 3])
for column, (name, (lv, wd)) in zip(tools, presets.items(), strict=False):
    column.button(name, key=f"preset_{name.split()[0].lower()}", on_click=set_window, args=(lv, wd), width="stretch",
                  help=f"Window preset: {scan_tools.WINDOW_PRESETS[name]} (sets level {lv}, width {wd})")
dragmode = tools[3].radio("Drag on the image to", ["zoom", "pan"], horizontal=True, key="dragmode",
                          help="Scroll also zooms; double-click resets the view", label_visibility="collapsed")
with st.sidebar:
    st.markdown("**Image** (window presets: above the image)")
    level = st.slider("Window level", 0, 255, key="level", help="Centre of the displayed grey range (0-255)")
    width = st.slider("Window width", 1, 255, key="width", help="Width of the displayed grey range")
    st.markdown("**Grad-CAM overlay**")
    show_cam = st.toggle("Show overlay", value=True, key="show_cam")
    opacity = st.slider("Overlay opacity", 0.0, 1.0, 0.4, 0.05, key="opacity")
    colormap = st.selectbox("Colormap", scan_tools.COLORMAPS, key="colormap")
    threshold = st.slider("Threshold", 0.0, 1.0, 0.2, 0.05, key="threshold",
                          help="Show the heat map only where it is at least this (0-1, per image)")
    method = st.selectbox("Method", CAM_METHODS, key="method")
    on_demand_cam = st.toggle("Compute Grad-CAM when none is stored", value=True, key="on_demand")
controls = {"level": level, "width": width, "show_cam": show_cam, "opacity": opacity, "colormap": colormap,
            "threshold": threshold, "method": method, "on_demand": on_demand_cam, "dragmode": dragmode,
            "subject": subject}

st.caption(f"Slice {scans.index(scan) + 1} of {len(scans)} · {common.code(scan)}")
pred_a = by_scan.loc[scan].copy()
pred_a["scan"] = scan
if compare is None:
    shown_a = show_model(url, run_id, pred_a, image, {**controls, "narrow": False}, "a")
else:
    preds_b = common.predictions(url, int(compare))
    match = preds_b[preds_b["scan"] == scan]
    left, right = st.columns(2)
    with left:
        st.markdown(f"##### Run #{run_id}")
        shown_a = show_model(url, run_id, pred_a, image, {**controls, "narrow": True}, "a")
    with right:
        st.markdown(f"##### Run #{compare}")
        image_b = image  # each model is shown the slice as it reads it (its own --preprocess)
        preprocess_b = run_preprocess(url, int(compare))
        if image is not None and preprocess_b != run_preprocess(url, run_id):
            try:
                image_b = scan_view(scan, tuple(common.data_roots(url, int(compare))), preprocess_b)[0]
            except Exception as exc:  # the same file read another way: unreadable only if it moved meanwhile
                image_b = None
                st.warning(f"Cannot show this scan as run #{compare} reads it: {common.md(exc)}")
        show_model(url, int(compare), match.iloc[0] if not match.empty else None, image_b,
                   {**controls, "narrow": True}, "b")
if shown_a is not None and image is not None:
    report_button(url, run_id, pred_a, image, shown_a, decision,
                  f"mean of the stored probabilities of this subject's {decision.n_slices} {split} slice(s), "
                  f"run {run_id}", roots, controls)

st.divider()
show_upload(url, models, controls)
