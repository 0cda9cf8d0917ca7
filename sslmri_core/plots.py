"""Plotly figure builders for the dashboard (importable and testable without Streamlit).

They take the frames and dataclasses of :mod:`sslmri_core.queries` and return figures.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from sslmri_core.queries import ConfusionMatrix

# Chart titles for families of metric keys; keys outside every family get a chart of their own.
_FAMILIES = (
    ("Loss", ("loss",)),
    ("Validation", ("val_",)),
    ("Learning rate", ("lr",)),
    ("Throughput", ("images_per_s", "per_s")),
)


def x_axis(points: pd.DataFrame) -> str | None:
    """``step`` when some point has one, else ``epoch`` when some point has one, else None.

    Finetune runs append a final value (step and epoch None) to per-epoch series such as
    ``val_accuracy``; such points are not part of the curve.
    """
    for column in ("step", "epoch"):
        if points[column].notna().any():
            return column
    return None


def _family(key: str) -> str:
    for title, markers in _FAMILIES:
        if any(key.startswith(m) or key.endswith(m) or f"_{m}" in key for m in markers):
            return title
    return key


def curve_groups(series: pd.DataFrame) -> dict[str, list[str]]:
    """Chart title -> metric keys drawn on it, for every series that is a curve.

    A curve has points with a step or an epoch; final values (step and epoch None) are left to
    the final-metrics table. Keys share a chart when they share a family and an x axis.
    """
    groups: dict[str, list[str]] = {}
    for key, points in series.groupby("key", sort=False):
        axis = x_axis(points)
        if axis is None:
            continue
        title = f"{_family(str(key))} per {axis}"
        groups.setdefault(title, []).append(str(key))
    return groups


def curves_figure(series: pd.DataFrame, keys: list[str], title: str = "") -> go.Figure:
    """Line chart of ``keys`` from a long metric frame; NaN points show as gaps."""
    fig = go.Figure()
    axis = "step"
    for key in keys:
        points = series[series["key"] == key]
        axis = x_axis(points) or "step"
        points = points[points[axis].notna()]
        fig.add_trace(
            go.Scatter(
                x=points[axis].astype("float64"),
                y=points["value"].astype("float64"),
                mode="lines+markers" if len(points) <= 50 else "lines",
                name=key,
            )
        )
    if axis == "epoch" and len(series) and series["epoch"].max() <= 20:
        fig.update_xaxes(dtick=1)  # whole epochs only
    fig.update_layout(
        title=title, xaxis_title=axis, height=320, margin={"l": 10, "r": 10, "t": 40, "b": 10},
        legend={"orientation": "h", "y": -0.25},
    )
    return fig


def confusion_figure(cm: ConfusionMatrix, normalise: bool = False) -> go.Figure:
    """Heatmap of a confusion matrix (rows true, columns predicted), counts or row fractions."""
    frame = cm.normalised() if normalise else cm.counts()
    text = frame.map(lambda v: f"{v:.2f}") if normalise else frame.astype(str)
    fig = go.Figure(
        go.Heatmap(
            z=frame.to_numpy(),
            x=cm.labels,
            y=cm.labels,
            text=text.to_numpy(),
            texttemplate="%{text}",
            colorscale="Blues",
            zmin=0,
            zmax=1 if normalise else None,
            hovertemplate="true %{y}<br>predicted %{x}<br>%{text}<extra></extra>",
        )
    )
    side = 160 + 60 * len(cm.labels)
    fig.update_layout(
        title=f"Confusion matrix — {cm.split} / {cm.level}" + (" (row-normalised)" if normalise else ""),
        xaxis_title="predicted", yaxis_title="true", height=max(side, 360),
        yaxis={"autorange": "reversed"}, margin={"l": 10, "r": 10, "t": 40, "b": 10},
    )
    return fig


def _arm_label(arm: str, label_fraction: float) -> str:
    return arm if pd.isna(label_fraction) else f"{arm} @ {label_fraction:.0%} labels"


def latest_results_figure(latest: pd.DataFrame, metric: str = "test_macro_f1") -> go.Figure:
    """Grouped bars of ``metric`` per task, one bar per arm (from ``latest_finetune_by_task``)."""
    fig = go.Figure()
    labels = [_arm_label(a, f) for a, f in zip(latest["arm"], latest["label_fraction"], strict=True)]
    frame = latest.assign(arm_label=labels)
    for arm_label, rows in frame.groupby("arm_label", sort=True):
        fig.add_trace(
            go.Bar(
                x=rows["task"], y=rows[metric].astype("float64"), name=str(arm_label),
                text=rows[metric].map(lambda v: "" if pd.isna(v) else f"{v:.3f}"), textposition="outside",
                customdata=rows["run_id"], hovertemplate="run #%{customdata}: %{y:.3f}<extra></extra>",
            )
        )
    fig.update_layout(
        barmode="group", yaxis={"title": metric.replace("_", " "), "range": [0, 1.08]}, height=340,
        margin={"l": 10, "r": 10, "t": 20, "b": 10}, legend={"orientation": "h", "y": -0.2},
    )
    return fig
