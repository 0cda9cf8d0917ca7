"""The Scan Explorer's Plotly figures: the slice viewer and the strip of a patient's slice predictions.

Streamlit-free and torch-free (plotly, numpy and PIL only), so the tests build the figures directly.
The viewer draws the windowed RGB overlay already rendered at the display size (a PNG, never a small
array the browser would upscale as blocks) and lays an invisible grid over it that carries, per pixel,
the scan's grey value (before the window) and the map's value, which the hover shows.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from PIL import Image

HOVER_STRIDE = 2  # the hover grid takes every 2nd pixel of the 512 px image: 256 x 256 values per slice
COMPARE_PX = 432  # two models side by side: both images this size (two 512 px images do not fit a laptop)
STRIP_HEIGHT = 170
CLASS_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
IMAGE_CONFIG = {"displaylogo": False, "scrollZoom": True, "doubleClick": "reset",
                "modeBarButtonsToRemove": ["select2d", "lasso2d", "autoScale2d"]}
STRIP_CONFIG = {"displaylogo": False, "displayModeBar": False}


def png_uri(rgb: np.ndarray) -> str:
    """An RGB uint8 array as a ``data:image/png`` URI."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(rgb, np.uint8)).save(buf, format="PNG", compress_level=3)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def image_figure(rgb: np.ndarray, grey: np.ndarray, cam: np.ndarray | None, *, px: int, dragmode: str = "zoom",
                 revision: str = "", title: str = "") -> go.Figure:
    """The slice viewer: ``rgb`` ``(S, S, 3)`` (already windowed and blended, drawn as it is) in a ``px`` x ``px``
    square; hovering shows the pixel (x, y), the grey value of ``grey`` ``(S, S)`` there and the map value of
    ``cam`` ``(S, S)`` (None: no map). Drag zooms (or pans: ``dragmode="pan"``), the wheel zooms, a double
    click resets; ``revision`` keeps the zoom while it stays the same (Plotly's ``uirevision``)."""
    size = int(rgb.shape[0])
    picture = go.Image(source=png_uri(rgb), x0=0, y0=0, dx=1, dy=1, hoverinfo="skip", name="scan")
    step = np.arange(0, size, HOVER_STRIDE)
    values = np.asarray(grey)[::HOVER_STRIDE, ::HOVER_STRIDE].astype(np.uint8)
    if cam is None:
        custom, cam_line = None, "no map"
    else:
        custom, cam_line = np.round(np.asarray(cam, np.float32)[::HOVER_STRIDE, ::HOVER_STRIDE], 2), "%{customdata:.2f}"
    grid = go.Heatmap(x=step, y=step, z=values, customdata=custom, opacity=0.0, showscale=False,
                      colorscale=[[0, "black"], [1, "white"]], zmin=0, zmax=255, name="values",
                      hovertemplate=f"x %{{x}} px, y %{{y}} px<br>grey %{{z}} (0-255, before the window)"
                                    f"<br>map {cam_line}<extra></extra>")
    fig = go.Figure([picture, grid])
    axis = {"visible": False, "showgrid": False, "zeroline": False, "range": [-0.5, size - 0.5]}
    fig.update_layout(width=px, height=px, autosize=False, margin={"l": 0, "r": 0, "t": 24 if title else 0, "b": 0},
                      dragmode=dragmode, uirevision=revision or None, hovermode="closest",
                      title={"text": title, "font": {"size": 13}, "x": 0.01, "y": 0.99} if title else None,
                      paper_bgcolor="black", plot_bgcolor="black")
    fig.update_xaxes(**axis, constrain="domain")
    fig.update_yaxes(**{**axis, "range": [size - 0.5, -0.5]}, scaleanchor="x", scaleratio=1, constrain="domain")
    return fig


def strip_figure(slices: Sequence[dict[str, Any]], classes: Sequence[str], decided: str, current: str) -> go.Figure:
    """A patient's slices along the slice axis, left to right: one bar per slice, its height the slice's
    probability of the patient-level class ``decided``, its colour the slice's own predicted class; the
    shown slice (``current``, a scan key) is outlined and marked. Each slice dict: ``scan``, ``name``,
    ``position`` (float or None), ``pred_label``, ``confidence``, ``p_decided``."""
    colour = {c: CLASS_COLOURS[i % len(CLASS_COLOURS)] for i, c in enumerate(classes)}
    order = list(range(1, len(slices) + 1))
    fig = go.Figure()
    for label in dict.fromkeys(s["pred_label"] for s in slices):  # one trace per predicted class: a legend
        idx = [i for i, s in enumerate(slices) if s["pred_label"] == label]
        fig.add_bar(
            x=[order[i] for i in idx], y=[slices[i]["p_decided"] for i in idx], name=f"slice predicts {label}",
            marker={"color": colour.get(label, "#7f7f7f"),
                    "line": {"width": [3 if slices[i]["scan"] == current else 0 for i in idx], "color": "black"}},
            customdata=[[slices[i]["name"], slices[i]["pred_label"], slices[i]["confidence"],
                         "—" if slices[i]["position"] is None else f"{slices[i]['position']:g}", order[i]]
                        for i in idx],
            hovertemplate=("slice %{customdata[4]} · %{customdata[0]}<br>position %{customdata[3]}"
                           "<br>predicts %{customdata[1]} (%{customdata[2]:.0%})"
                           f"<br>P({decided}) %{{y:.0%}}<extra></extra>"))
    here = next((i for i, s in enumerate(slices) if s["scan"] == current), None)
    if here is not None:
        fig.add_annotation(x=order[here], y=1.0, text="▼ shown", showarrow=False, yanchor="bottom",
                           font={"size": 11})
    fig.update_layout(height=STRIP_HEIGHT, margin={"l": 64, "r": 10, "t": 22, "b": 30}, bargap=0.08,
                      clickmode="event+select", dragmode=False, showlegend=True,
                      legend={"orientation": "h", "y": 1.28, "x": 0, "font": {"size": 11}})
    fig.update_xaxes(title={"text": "slice, in order along the slice axis (click one to show it)",
                            "font": {"size": 11}},
                     tickmode="array" if len(slices) <= 30 else "auto", tickvals=order if len(slices) <= 30 else None,
                     range=[0.4, len(slices) + 0.6], fixedrange=True)
    fig.update_yaxes(title={"text": f"P({decided})", "font": {"size": 11}}, range=[0, 1.12], fixedrange=True,
                     tickformat=".0%", tickvals=[0, 0.5, 1])
    return fig


def selected_order(event: Any) -> int | None:
    """The 1-based slice order of the clicked strip bar in a ``st.plotly_chart`` selection (None: no click)."""
    try:
        points = event["selection"]["points"]
    except (KeyError, TypeError):
        return None
    for point in points or []:
        x = point.get("x") if isinstance(point, dict) else None
        if isinstance(x, (int, float)):
            return int(x)
    return None
