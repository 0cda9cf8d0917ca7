"""Scan Explorer: one patient's slices with the model's prediction, Grad-CAM overlay and statistics.

Pick task -> model (a fine-tuning run) -> subject -> slice; step through the subject's slices;
adjust window/level and the overlay; compare a second model on the same scan; upload a slice.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

import common
import scan_tools
from sslmri_core.config import CAM_METHODS

SLICE_KEY = "scan_slice"
CAM_COLUMNS = ["method", "target_label", "confidence", "intensity", "area_pct", "in_brain", "raw_max", "raw_mean",
               "deletion_drop", "random_drop", "road", "pointing_hit", "lesion_energy"]


def natural_key(text: str) -> list[Any]:
    """``slice_2`` before ``slice_10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def run_choice(row: pd.Series) -> str:
    seed = "" if pd.isna(row["seed"]) else f" · seed {row['seed']}"
    return f"#{row['id']} · {row['arm']} · {common.fraction_label(row['fraction'])} labels{seed} · {row['model']}"


def step_slice(options: list[str], delta: int) -> None:
    current = st.session_state.get(SLICE_KEY)
    i = options.index(current) if current in options else 0
    st.session_state[SLICE_KEY] = options[(i + delta) % len(options)]


@st.cache_data(ttl=common.CACHE_TTL_S, show_spinner=False)
def run_classes(url: str, run_id: int) -> list[str]:
    detail = common.run_detail(url, run_id)
    raw = detail.params.get("classes") if detail else None
    try:
        return [str(c) for c in json.loads(raw)] if raw else []
    except ValueError:
        return []


@st.cache_resource(show_spinner="Loading the model…", max_entries=4)
def loaded_model(url: str, run_id: int) -> Any:
    return scan_tools.load_model(url, run_id)  # imports torch: on-demand Grad-CAM only


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


def cam_for(url: str, run_id: int, scan: str, method: str, size: int) -> tuple[np.ndarray | None, pd.DataFrame, str]:
    """The stored CAM of ``scan`` under ``method`` (or computed now), its stored statistics, and a note."""
    stats = common.cam_stats(url, run_id)
    rows = stats[stats["scan"] == scan] if not stats.empty else stats
    chosen = rows[rows["method"] == method] if not rows.empty else rows
    if not chosen.empty and isinstance(chosen.iloc[-1]["heatmap_path"], str):
        last = chosen.iloc[-1]
        try:
            return scan_tools.load_heatmap(last["out_dir"], last["heatmap_path"], size), rows, (
                f"stored {common.md(method)} heat map of Grad-CAM run #{last['gradcam_run_id']}")
        except Exception as exc:  # a moved or unsafe file: say so, fall through to on-demand
            note = f"stored heat map not readable ({common.md(exc)})"
    else:
        note = f"no stored {common.md(method)} heat map for this scan"
    if not st.session_state.get("on_demand", True):
        hint = " · run `python cli.py gradcam --run ID` to store them" if "no stored" in note else ""
        return None, rows, note + hint
    return None, rows, note


def on_demand(url: str, run_id: int, image: np.ndarray, method: str) -> tuple[Any | None, str]:
    """Compute prediction + CAM now with ``sslmri_core.explain.cam`` (the page's only use of torch); (None, why)
    when that is not possible (``why`` is markdown)."""
    try:
        return scan_tools.predict_with_cam(loaded_model(url, run_id), image, method), ""
    except Exception as exc:
        return None, f"could not compute Grad-CAM: {common.md(f'{exc.__class__.__name__}: {exc}')}"


def show_model(url: str, run_id: int, pred: pd.Series | None, image: np.ndarray | None, controls: dict[str, Any],
               key: str) -> None:
    """One model's view of the scan: prediction, probabilities, overlay, stored CAM statistics."""
    if pred is None:
        st.info(f"Run #{run_id} has no prediction for this scan (it was in another split for that run).")
        return
    right = pred["pred_label"] == pred["true_label"]
    verdict = ":green[correct]" if right else f":red[**wrong** — true class: {common.md(pred['true_label'])}]"
    st.markdown(f"**Prediction: {common.md(pred['pred_label'])}** — confidence {pred['confidence']:.1%} · {verdict}")
    if image is None:
        return
    cam, stats, note = cam_for(url, run_id, pred["scan"], controls["method"], image.shape[0])
    if cam is None and controls["on_demand"]:
        result, why = on_demand(url, run_id, image, controls["method"])
        if result is not None:
            cam, note = np.asarray(result.cam, dtype=np.float32), f"{controls['method']} computed now"
        elif why:
            note = f"{note}; {why}"
    rgb = scan_tools.overlay(image, cam if controls["show_cam"] else None, opacity=controls["opacity"],
                             colormap=controls["colormap"], threshold=controls["threshold"], level=controls["level"],
                             width=controls["width"])
    picture, numbers = st.columns([3, 2]) if not controls["narrow"] else (st.container(), st.container())
    picture.image(rgb, caption=f"run #{run_id} · {note}", width=controls["image_px"])
    with numbers:
        show_probabilities(probability_table(run_classes(url, run_id), list(pred["probs"]), pred["true_label"]),
                           key=f"probs-{key}")
    if not stats.empty:
        st.caption("Stored Grad-CAM statistics (intensity: mean CAM; area: % of pixels above the threshold; "
                   "in_brain: share of CAM energy inside the brain)")
        st.dataframe(stats[[c for c in CAM_COLUMNS if c in stats]], hide_index=True, key=f"cam-{key}")


def show_upload(url: str, models: pd.DataFrame, controls: dict[str, Any]) -> None:
    st.subheader("Upload a slice")
    st.caption(f"PNG, JPEG or NIfTI (.nii, .nii.gz), up to {scan_tools.MAX_UPLOAD_MB} MB. It is decoded in memory "
               "(a NIfTI volume in a temporary folder deleted at once) and never stored.")
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
        z = st.select_slider("Axial slice", chosen.slice_indices, value=middle)
        chosen = decoded.slice(int(z))
    names = {int(row["id"]): run_choice(row) for row in models.to_dict("records")}
    model = st.selectbox("Model", list(names), key="upload_model", format_func=names.get)
    left, right = st.columns(2)
    result, why = on_demand(url, int(model), chosen.image, controls["method"])
    with left:
        cam = None if result is None or not controls["show_cam"] else np.asarray(result.cam, np.float32)
        rgb = scan_tools.overlay(chosen.image, cam, opacity=controls["opacity"], colormap=controls["colormap"],
                                 threshold=controls["threshold"], level=controls["level"], width=controls["width"])
        st.image(rgb, caption=f"{common.md(chosen.name)} · {common.md(chosen.note)}", width=420)
    with right:
        if result is None:
            st.warning(f"No prediction: {why}")
        else:
            st.markdown(f"**Prediction: {common.md(result.pred_label)}** — confidence {result.confidence:.1%}")
            show_probabilities(pd.DataFrame({"class": list(result.probs), "probability": list(result.probs.values())})
                               .sort_values("probability", ascending=False), key="probs-upload")


url = common.setup_page("Scan Explorer", "🩻")
st.title("Scan Explorer")
common.require_runs(url)

models = common.scan_runs(url)
if models.empty:
    common.empty_state("No fine-tuned model with per-scan predictions yet: fine-tuning stores one per val/test scan.",
                       "python cli.py finetune --from-run ID   # or: python cli.py demo")

# -- what to look at ---------------------------------------------------------------------------------
wanted = common.query_run_id()
pick = st.columns([1, 3, 3])
tasks = sorted(models["task"].unique())
task = pick[0].selectbox("Task", tasks, key="task")
task_models = models[models["task"] == task]
ids = task_models["id"].tolist()
names = {int(row["id"]): run_choice(row) for row in task_models.to_dict("records")}  # once, not per option
default = ids.index(wanted) if wanted in ids else 0
run_id = int(pick[1].selectbox("Model", ids, index=default, key="model", format_func=names.get))
others = [r for r in ids if r != run_id]
compare = pick[2].selectbox("Side by side with", [None, *others], key="compare",
                            format_func=lambda r: "(one model)" if r is None else names[r])

preds = common.predictions(url, run_id)
filters = st.columns([1, 1, 2])
splits = sorted(preds["split"].unique())
split = filters[0].selectbox("Split", splits, index=splits.index("test") if "test" in splits else 0, key="split")
wrong_only = filters[1].toggle("Misclassified only", key="wrong_only")
max_conf = filters[2].slider("Confidence at most", 0.0, 1.0, 1.0, 0.05, key="max_conf",
                             help="Lower it to list only low-confidence scans")
shown = preds[(preds["split"] == split) & (preds["confidence"] <= max_conf + 1e-9)]
if wrong_only:
    shown = shown[~shown["correct"]]
if shown.empty:
    st.info("No scan matches these filters.")
    st.stop()

subjects = shown.groupby(shown["subject"].fillna("(no subject id)")).agg(
    n=("scan", "size"), wrong=("correct", lambda c: int((~c).sum())), label=("true_label", "first"))
subject_names = sorted(subjects.index, key=natural_key)
who = st.columns([2, 3, 1, 1])
subject = who[0].selectbox("Subject", subject_names, key="subject",
                           format_func=lambda s: f"{s} · {subjects.loc[s, 'label']} · {subjects.loc[s, 'n']} slices"
                           + (f" · {subjects.loc[s, 'wrong']} wrong" if subjects.loc[s, "wrong"] else ""))
rows = shown[shown["subject"].fillna("(no subject id)") == subject]
scans = sorted(rows["scan"], key=natural_key)
if st.session_state.get(SLICE_KEY) not in scans:
    st.session_state[SLICE_KEY] = scans[0]
scan = who[1].selectbox("Slice", scans, key=SLICE_KEY, format_func=lambda p: p.rsplit("/", 1)[-1])
who[2].button("◀ Previous", on_click=step_slice, args=(scans, -1), width="stretch", disabled=len(scans) < 2)
who[3].button("Next ▶", on_click=step_slice, args=(scans, 1), width="stretch", disabled=len(scans) < 2)

# -- display controls -----------------------------------------------------------------------------------
with st.sidebar:
    st.markdown("**Image**")
    level = st.slider("Window level", 0, 255, 128, key="level", help="Centre of the displayed intensity range")
    width = st.slider("Window width", 1, 255, 255, key="width", help="Width of the displayed intensity range")
    st.markdown("**Grad-CAM overlay**")
    show_cam = st.toggle("Show overlay", value=True, key="show_cam")
    opacity = st.slider("Overlay opacity", 0.0, 1.0, 0.4, 0.05, key="opacity")
    colormap = st.selectbox("Colormap", scan_tools.COLORMAPS, key="colormap")
    threshold = st.slider("Threshold", 0.0, 1.0, 0.2, 0.05, key="threshold",
                          help="Show the heat map only where it is at least this (0-1, per image)")
    method = st.selectbox("Method", CAM_METHODS, key="method")
    on_demand_cam = st.toggle("Compute Grad-CAM when none is stored", value=True, key="on_demand")
controls = {"level": level, "width": width, "show_cam": show_cam, "opacity": opacity, "colormap": colormap,
            "threshold": threshold, "method": method, "on_demand": on_demand_cam}

# -- the scan -----------------------------------------------------------------------------------------------
st.caption(common.code(scan))
try:
    image: np.ndarray | None = scan_tools.load_scan(scan, common.data_roots(url, run_id))
except Exception as exc:  # outside the run's data folders, moved, unreadable: say which and why
    st.warning(f"Cannot show this scan: {common.md(exc)}")
    image = None

pred_a = rows[rows["scan"] == scan].iloc[0]
votes = rows["pred_label"].value_counts()
st.markdown(f"Slice {scans.index(scan) + 1} of {len(scans)} of subject **{common.md(subject)}** (true class "
            f"**{common.md(rows['true_label'].iloc[0])}**). Across these slices run #{run_id} predicts: "
            + ", ".join(f"{common.md(label)} ×{n}" for label, n in votes.items()))  # noqa: RUF001  (a times sign)
if compare is None:
    show_model(url, run_id, pred_a, image, {**controls, "narrow": False, "image_px": 420}, "a")
else:
    preds_b = common.predictions(url, int(compare))
    match = preds_b[preds_b["scan"] == scan]
    left, right = st.columns(2)
    side = {**controls, "narrow": True, "image_px": 420}
    with left:
        st.markdown(f"##### Run #{run_id}")
        show_model(url, run_id, pred_a, image, side, "a")
    with right:
        st.markdown(f"##### Run #{compare}")
        show_model(url, int(compare), match.iloc[0] if not match.empty else None, image, side, "b")

st.divider()
show_upload(url, models, controls)
