"""Plotly figure builders for the dashboard (importable and testable without Streamlit).

They take the frames and dataclasses of :mod:`sslmri_core.store.queries` and return figures.
Text that comes from the store (class names, tasks, metric keys, run names) goes through
:func:`plain`: Plotly renders a subset of HTML (``<a href>`` included) in labels and titles.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from sslmri_core.config import ARMS
from sslmri_core.store.queries import ConfusionMatrix


def plain(text: Any) -> str:
    """``text`` as Plotly shows it literally (HTML tags and entities escaped)."""
    return html.escape(str(text), quote=False)


def _plain_all(texts: Iterable[Any]) -> list[str]:
    return [plain(t) for t in texts]

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
                name=plain(key),
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
            x=_plain_all(cm.labels),
            y=_plain_all(cm.labels),
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
        title=plain(f"{cm.split} / {cm.level}") + (" (row-normalised)" if normalise else ""),
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
                x=_plain_all(rows["task"]), y=rows[metric].astype("float64"), name=plain(arm_label),
                text=rows[metric].map(lambda v: "" if pd.isna(v) else f"{v:.3f}"), textposition="outside",
                customdata=rows["run_id"], hovertemplate="run #%{customdata}: %{y:.3f}<extra></extra>",
            )
        )
    fig.update_layout(
        barmode="group", yaxis={"title": metric.replace("_", " "), "range": [0, 1.08]}, height=340,
        margin={"l": 10, "r": 10, "t": 20, "b": 10}, legend={"orientation": "h", "y": -0.2},
    )
    return fig


# -- SSL vs supervised -------------------------------------------------------------------------------
ARM_COLORS = dict(zip(ARMS, ("#1f77b4", "#2ca02c", "#d62728", "#9467bd"), strict=True))  # in ARMS order


def label_efficiency_figure(curves: pd.DataFrame, metric_label: str, title: str = "") -> go.Figure:
    """Mean metric vs label fraction (log x) per arm, with the 95% interval as error bars (none where a
    row has no interval).

    ``curves`` is one experiment's :func:`sslmri_core.store.queries.label_efficiency` frame.
    """
    fig = go.Figure()
    for arm, rows in curves.groupby("arm", sort=False):
        rows = rows.sort_values("fraction")
        fig.add_trace(go.Scatter(
            x=rows["fraction"], y=rows["mean"], mode="lines+markers", name=str(arm),
            line={"color": ARM_COLORS.get(str(arm))},
            error_y={"type": "data", "symmetric": False, "array": rows["hi"] - rows["mean"],
                     "arrayminus": rows["mean"] - rows["lo"]},
            customdata=rows[["lo", "hi", "n_seeds", "n_test_subjects"]].to_numpy(),
            hovertemplate=(f"{arm}<br>labels %{{x:.1%}}<br>{metric_label} %{{y:.3f}}"
                           "<br>95% CI [%{customdata[0]:.3f}, %{customdata[1]:.3f}]<br>%{customdata[2]} seed(s), "
                           "%{customdata[3]} test subjects<extra></extra>"),
        ))
    fractions = sorted(curves["fraction"].dropna().unique())
    fig.update_xaxes(type="log", title="label fraction (log scale)", tickvals=fractions,
                     ticktext=[f"{f:.0%}" if f >= 0.01 else f"{f:.1%}" for f in fractions])
    fig.update_layout(title=title, yaxis_title=metric_label, height=380, margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      legend={"orientation": "h", "y": -0.25})
    return fig


def paired_difference_figure(paired: pd.DataFrame, metric_label: str) -> go.Figure:
    """Each SSL arm minus each baseline per label fraction: mean paired difference and its 95% interval
    (``paired``: one experiment's :func:`sslmri_core.store.queries.paired_differences` frame)."""
    fig = go.Figure()
    for (arm, baseline), rows in paired.groupby(["arm", "baseline"], sort=False):
        rows = rows.sort_values("fraction")
        fig.add_trace(go.Scatter(
            x=rows["fraction"], y=rows["mean_diff"], mode="markers+lines", name=f"{arm} − {baseline}",
            line={"color": ARM_COLORS.get(str(arm)), "dash": "solid" if baseline == "scratch" else "dot"},
            error_y={"type": "data", "symmetric": False, "array": rows["hi"] - rows["mean_diff"],
                     "arrayminus": rows["mean_diff"] - rows["lo"]},
            customdata=rows[["lo", "hi", "n_seeds", "wins", "n_test_subjects"]].to_numpy(),
            hovertemplate=("labels %{x:.1%}<br>difference %{y:+.3f}<br>95% CI [%{customdata[0]:+.3f}, "
                           "%{customdata[1]:+.3f}], %{customdata[4]} test subjects<br>better in %{customdata[3]} "
                           "of %{customdata[2]} seeds<extra></extra>"),
        ))
    fig.add_hline(y=0, line_dash="dash", line_color="gray")
    fractions = sorted(paired["fraction"].dropna().unique())
    fig.update_xaxes(type="log", title="label fraction (log scale)", tickvals=fractions,
                     ticktext=[f"{f:.0%}" if f >= 0.01 else f"{f:.1%}" for f in fractions])
    fig.update_layout(title="Paired difference, SSL minus baseline (same test subjects, seeds and resamples)",
                      yaxis_title=f"Δ {metric_label}", height=380, margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      legend={"orientation": "h", "y": -0.25})
    return fig


def confusion_difference_figure(a: ConfusionMatrix, b: ConfusionMatrix, normalise: bool,
                                names: tuple[str, str]) -> go.Figure:
    """B minus A, cell by cell (counts or row fractions), on the labels both share; red = B has more."""
    labels = [lab for lab in a.labels if lab in b.labels]
    fa = (a.normalised() if normalise else a.counts()).loc[labels, labels]
    fb = (b.normalised() if normalise else b.counts()).loc[labels, labels]
    diff = fb.astype(float) - fa.astype(float)
    text = diff.map(lambda v: f"{v:+.2f}" if normalise else f"{v:+.0f}")
    bound = float(abs(diff.to_numpy()).max()) or 1.0
    fig = go.Figure(go.Heatmap(
        z=diff.to_numpy(), x=_plain_all(labels), y=_plain_all(labels), text=text.to_numpy(), texttemplate="%{text}",
        colorscale="RdBu_r",
        zmin=-bound, zmax=bound, hovertemplate="true %{y}<br>predicted %{x}<br>%{text}<extra></extra>",
    ))
    side = 160 + 60 * len(labels)
    fig.update_layout(title=plain(f"{names[1]} minus {names[0]}") + (" (row-normalised)" if normalise else ""),
                      xaxis_title="predicted", yaxis_title="true", height=max(side, 360),
                      yaxis={"autorange": "reversed"},
                      margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return fig


# -- embeddings and data ----------------------------------------------------------------------------
MAX_LEGEND_GROUPS = 30  # colouring by subject with hundreds of subjects: one continuous trace instead


# Distinct hues (Plotly's D3 palette): Streamlit's default theme gives neighbouring classes near-identical shades.
QUALITATIVE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
               "#17becf")


def embedding_figure(points: pd.DataFrame, color_by: str, title: str = "",
                     legend_title: str | None = None) -> go.Figure:
    """Scatter of a stored 2-D map coloured by ``color_by``; hover shows the scan, subject, class and split."""
    fig = go.Figure()
    groups = points[color_by].fillna("(none)").astype(str).map(plain)
    hover = ("%{customdata[0]}<br>subject %{customdata[1]}<br>class %{customdata[2]}<br>split %{customdata[3]}"
             "<extra></extra>")
    custom = points[["scan", "subject", "label", "split"]].fillna("—").map(plain).to_numpy()
    if groups.nunique() > MAX_LEGEND_GROUPS:
        codes = pd.factorize(groups)[0]
        fig.add_trace(go.Scattergl(x=points["x"], y=points["y"], mode="markers", customdata=custom,
                                   marker={"color": codes, "colorscale": "Turbo", "size": 6},
                                   hovertemplate=hover, showlegend=False))
    else:
        for i, name in enumerate(sorted(groups.unique())):
            mask = (groups == name).to_numpy()
            fig.add_trace(go.Scattergl(x=points["x"][mask], y=points["y"][mask], mode="markers", name=name,
                                       customdata=custom[mask], hovertemplate=hover,
                                       marker={"size": 7, "opacity": 0.8, "color": QUALITATIVE[i % len(QUALITATIVE)]}))
    fig.update_layout(title=title, height=560, margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      xaxis={"showticklabels": False, "title": ""}, yaxis={"showticklabels": False, "title": ""},
                      legend={"title": legend_title or color_by})
    return fig


def class_balance_figure(counts: dict[str, int], title: str = "Images per class") -> go.Figure:
    labels = sorted(counts)
    fig = go.Figure(go.Bar(x=_plain_all(labels), y=[counts[k] for k in labels], text=[counts[k] for k in labels],
                           textposition="outside"))
    fig.update_layout(title=title, height=300, margin={"l": 10, "r": 10, "t": 40, "b": 10}, yaxis_title="images")
    return fig


LEAKAGE_COLORS = {"true": "#1f77b4", "shuffled": "#d62728"}


def leakage_figure(cells: pd.DataFrame, chance: float | None, title: str = "") -> go.Figure:
    """The leakage demonstration's 2x2 as grouped bars: x = split (subject, image), one bar per
    labelling (true, shuffled per subject), test balanced accuracy on y, and the chance level as a line.

    ``cells``: columns ``split, labels, balanced_accuracy`` (4 rows; a missing value draws no bar).
    """
    fig = go.Figure()
    names = {"subject": "split by subject", "image": "split by image"}
    for labels in ("true", "shuffled"):
        part = cells[cells["labels"] == labels]
        values = pd.to_numeric(part["balanced_accuracy"], errors="coerce")
        fig.add_trace(go.Bar(
            x=[names.get(s, s) for s in part["split"]], y=values, name=f"{labels} labels"
            + (" (per subject)" if labels == "shuffled" else ""), marker_color=LEAKAGE_COLORS[labels],
            text=[f"{v:.2f}" if pd.notna(v) else "" for v in values], textposition="outside",
        ))
    if chance is not None:
        fig.add_hline(y=chance, line_dash="dash", line_color="#7f7f7f",
                      annotation_text=f"chance {chance:.2f}", annotation_position="top left")
    fig.update_layout(barmode="group", title=title, height=340, margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      yaxis={"title": "test balanced accuracy", "range": [0, 1.08]},
                      legend={"orientation": "h", "y": -0.15})
    return fig
