"""Runs: filter the table, pick a run (or open ``?run=ID``), see its config, metrics and curves."""

from __future__ import annotations

from datetime import datetime

import pandas as pd
import streamlit as st

import common
from sslmri_core import plots
from sslmri_core.store.queries import RunDetail, params_frame

RUN_KEY = "selected_run"
ALL = "(all)"
TABLE_COLUMNS = [
    "id", "kind", "status", "task", "parent_run_id", "arm", "label_fraction", "seed", "model",
    "test_balanced_accuracy", "test_accuracy", "test_macro_f1", "final_loss", "created_at", "duration_s", "device",
]


def pick(label: str, values: pd.Series) -> str | None:
    """Sidebar filter over the distinct non-empty values; None means no filter."""
    options = [ALL, *sorted({str(v) for v in values.dropna()})]
    choice = st.sidebar.selectbox(label, options)
    return None if choice == ALL else choice


def sync_query_param() -> None:
    # Keep the URL shareable: ?run= follows the picker.
    chosen = st.session_state.get(RUN_KEY)
    if chosen is None:
        st.query_params.pop("run", None)
    else:
        st.query_params["run"] = str(chosen)


def requested_run(all_ids: set[int]) -> tuple[int | None, str | None]:
    """The run asked for by ``?run=``: (id, None), (None, complaint) or (None, None) if not asked, or not a run id
    (that gets :func:`common.query_run_id`'s one message, and the page its default)."""
    run_id = common.query_run_id()
    if run_id is None:
        return None, None
    if run_id not in all_ids:
        return None, f"There is no run #{run_id} in this store."
    return run_id, None


def choose_run(all_runs: pd.DataFrame, shown: pd.DataFrame) -> int | None:
    """Run picker over the filtered runs; ``?run=ID`` preselects (even a run filtered out)."""
    labels = {int(row["id"]): common.run_label(row) for row in all_runs.to_dict("records")}
    options = [int(i) for i in shown["id"]]
    wanted, complaint = requested_run(set(labels))
    if complaint:
        st.warning(complaint + " Pick a run below.")
        st.session_state[RUN_KEY] = None
    elif wanted is not None:
        options = options if wanted in options else [wanted, *options]
        st.session_state[RUN_KEY] = wanted
    elif st.session_state.get(RUN_KEY) not in options:
        st.session_state[RUN_KEY] = options[0] if options else None
    return st.selectbox(
        "Run", options, key=RUN_KEY, format_func=labels.get, on_change=sync_query_param,
        placeholder="Choose a run",
    )


def fit_height(n_rows: int) -> int:
    # Tall enough to show every row without an inner scrollbar (35 px rows plus the header).
    return 35 * (n_rows + 1) + 3


def when(moment: datetime | None) -> str:
    # The store writes UTC; SQLite hands it back without a zone.
    return "" if moment is None else f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def show_overview(detail: RunDetail) -> None:
    """Status and the record's facts."""
    run = detail.run
    st.subheader("Run")
    if run.status == "failed":
        st.error(f"This run failed: {common.md(run.error) if run.error else 'no error recorded'}")
    elif run.status in ("running", "interrupted"):
        st.info(f"Status: {common.md(run.status)}" + (f" — {common.md(run.error)}" if run.error else ""))
    facts = {
        "status": run.status, "created": when(run.created_at), "ended": when(run.ended_at),
        "device": run.device, "host": run.host, "git sha": run.git_sha, "checkpoint": run.checkpoint_path,
        "output folder": run.out_dir,
    }
    st.dataframe(
        pd.DataFrame([(k, v or "") for k, v in facts.items()], columns=["field", "value"]),
        hide_index=True, height=fit_height(len(facts)),
    )
    if run.parent_run_id is not None:
        st.page_link(
            common.RUNS_PAGE, label=f"Parent run #{run.parent_run_id}", query_params={"run": str(run.parent_run_id)}
        )


def show_config(detail: RunDetail) -> None:
    left, right = st.columns(2)
    with left:
        st.subheader("Config")
        st.json(detail.run.config, expanded=True)
    with right:
        st.subheader("Parameters")
        if detail.params:
            st.dataframe(params_frame(detail), hide_index=True)
        else:
            st.caption("No parameters recorded.")


def show_final_metrics(url: str, run_id: int) -> None:
    st.subheader("Final metrics")
    finals = common.final_metrics(url, run_id)
    if finals.empty:
        st.caption("No metrics recorded.")
        return
    st.dataframe(finals, hide_index=True, column_config=common.METRIC_COLUMNS, height=min(fit_height(len(finals)), 420))  # per-class metrics: scroll, not a page-long table


def show_curves(url: str, run_id: int) -> None:
    series = common.metric_series(url, run_id)
    groups = plots.curve_groups(series)
    if not groups:
        return
    st.subheader("Curves")
    columns = st.columns(2)
    for i, (title, keys) in enumerate(groups.items()):
        with columns[i % 2]:
            st.plotly_chart(plots.curves_figure(series, keys, title), key=f"curve-{run_id}-{title}")


def show_confusion(url: str, run_id: int) -> None:
    st.subheader("Confusion matrix")
    views = common.confusion_views(url, run_id)
    if not views:
        st.caption("No confusion matrix recorded for this run.")
        return
    left, right = st.columns([2, 1])
    split, level = left.selectbox("Split / level", views, format_func=lambda v: f"{v[0]} / {v[1]}")
    normalise = right.toggle("Row-normalised", value=False, help="Each true-class row divided by its total")
    cm = common.confusion(url, run_id, split, level)
    if cm is None:
        st.caption(f"No {common.md(split)}/{common.md(level)} confusion matrix.")
        return
    st.plotly_chart(plots.confusion_figure(cm, normalise), key=f"cm-{run_id}-{split}-{level}-{normalise}")


def show_predictions(url: str, run_id: int) -> None:
    preds = common.predictions(url, run_id)
    if preds.empty:
        return
    wrong = int((~preds["correct"]).sum())
    with st.expander(f"Per-scan predictions ({len(preds)}, {wrong} wrong; least confident first)"):
        st.dataframe(
            preds.drop(columns=["probs"]).head(1000), hide_index=True,
            column_config={"confidence": st.column_config.ProgressColumn("confidence", min_value=0.0, max_value=1.0)},
        )


def show_children(all_runs: pd.DataFrame, run_id: int) -> None:
    children = all_runs[all_runs["parent_run_id"] == run_id]
    if children.empty:
        return
    st.subheader(f"Runs started from #{run_id}")
    st.dataframe(children[TABLE_COLUMNS], hide_index=True, column_config=common.METRIC_COLUMNS)


def show_links(run_id: int, kind: str) -> None:
    """Where else this run can be looked at."""
    query = {"run": str(run_id)}
    links = st.columns(4)
    if kind == "finetune":
        links[0].page_link(common.PAGES["confusion"], label="Confusion matrix", icon=":material/grid_on:", query_params=query)
        links[1].page_link(common.PAGES["scans"], label="Scans", icon=":material/radiology:", query_params=query)
    if kind in ("pretrain", "finetune"):
        links[2].page_link(common.PAGES["embeddings"], label="Embeddings", icon=":material/scatter_plot:", query_params=query)


url = common.setup_page("Runs", "📋")
st.title("Runs")
common.require_runs(url)

all_runs = common.runs(url)
st.sidebar.markdown("**Filter runs**")
kind = pick("Kind", all_runs["kind"])
status = pick("Status", all_runs["status"])
task = pick("Task", all_runs["task"])
arm = pick("Arm", all_runs["arm"])
shown = all_runs  # filtered here: one cached query serves every filter combination
for column, wanted in (("kind", kind), ("status", status), ("task", task), ("arm", arm)):
    if wanted is not None:
        shown = shown[shown[column].astype(str) == wanted]

st.dataframe(shown[TABLE_COLUMNS], hide_index=True, column_config=common.METRIC_COLUMNS)
if shown.empty:
    st.info("No run matches these filters.")

run_id = choose_run(all_runs, shown)
detail = common.run_detail(url, run_id) if run_id is not None else None
if detail is None:
    st.stop()

run = detail.run
st.header(f"Run #{run.id} — {common.md(run.kind)}" + (f" · {common.md(run.task)}" if run.task else ""))
show_links(run.id, run.kind)
overview, finals = st.columns(2)
with overview:
    show_overview(detail)
with finals:
    show_final_metrics(url, run_id)
show_config(detail)
show_curves(url, run_id)
show_confusion(url, run_id)
show_predictions(url, run_id)
show_children(all_runs, run_id)
