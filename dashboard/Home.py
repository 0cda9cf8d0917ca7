"""sslmri dashboard home: where the store is, what ran, the latest results, what failed."""

from __future__ import annotations

import pandas as pd
import streamlit as st

import common
from sslmri_core import plots
from sslmri_core.store import queries

MAX_FAILED_SHOWN = 5

url = common.setup_page("Home", "🧠")
st.title("sslmri — SimCLR for brain MRI")
status = common.require_runs(url)
st.caption(f"Run store: {common.code(status.url)} (set `SSLMRI_DB` to open another one)")

counts = common.counts(url)
totals = counts[["running", "finished", "failed", "interrupted"]].sum()
cols = st.columns(5)
cols[0].metric("Runs", status.n_runs)
for col, name in zip(cols[1:], ["finished", "running", "failed", "interrupted"], strict=True):
    col.metric(name.capitalize(), int(totals[name]))

results = common.finetune_results(url)
leaky = queries.latest_results(results)
leaky = leaky[leaky["leakage_prone"].astype(bool)]
if not leaky.empty:
    st.error(
        f"{len(leaky)} of the latest results are leakage-prone (no subject ids to split by, a leaky given split "
        "kept on purpose, or test images in the SSL pool; `python cli.py runs show ID` names the reasons). "
        "Runs: " + ", ".join(f"#{r}" for r in leaky["run_id"])
    )
warnings = common.audit_warnings(url)
for line in warnings:
    st.error(f"Data audit: {common.md(line)}. See the Data page.")
if warnings:
    st.page_link(common.PAGES["data"], label="Open the Data page", icon=":material/dataset:")

st.subheader("Full labels: each arm in the latest experiment per task")
headline = common.full_label_results(url)
if headline.empty:
    st.info("No experiment with stored test predictions yet: `python cli.py experiment --task tumor` runs every "
            "arm on one split (single `finetune` runs are listed below, never averaged together).")
else:
    st.caption("Test balanced accuracy (slice level) at 100% labels (or, where the grid has no 100%, its largest "
               "fraction, fixed before any result): mean over seeds with a 95% bootstrap interval over test subjects, "
               "stratified by class. Leakage-prone runs are left out. Never the best fraction picked on test.")
    table = headline.assign(fraction=headline["fraction"].map(common.fraction_label),
                            interval=[f"[{lo:.3f}, {hi:.3f}]" if pd.notna(lo) and pd.notna(hi) else "—"
                                      for lo, hi in zip(headline["lo"], headline["hi"], strict=True)],
                            note=headline["note"].fillna(""))
    st.dataframe(table[["task", "experiment_id", "arm", "fraction", "mean", "interval", "n_seeds", "n_test_subjects",
                        "note"]], hide_index=True, column_config={
        "experiment_id": st.column_config.NumberColumn("experiment", format="%d"),
        "mean": st.column_config.NumberColumn("balanced accuracy", format="%.3f"),
        "n_seeds": st.column_config.NumberColumn("seeds"),
        "n_test_subjects": st.column_config.NumberColumn("test subjects"),
    })
    st.page_link(common.PAGES["ssl"], label="Label-efficiency curves: SSL vs supervised", icon=":material/show_chart:")

experiments = common.experiments(url)
if not experiments.empty:
    st.subheader("Latest experiments")
    shown = experiments.head(5)
    shown = shown.drop(columns="error") if shown["error"].isna().all() else shown
    st.dataframe(shown, hide_index=True, column_config={
        "id": st.column_config.NumberColumn("run", format="%d"),
        "created_at": st.column_config.DatetimeColumn("created (UTC)", format="YYYY-MM-DD HH:mm"),
        "finished_children": st.column_config.NumberColumn("finished"),
    })

st.subheader("Runs by kind and status")
st.dataframe(counts, hide_index=True, width="content")
st.page_link(common.RUNS_PAGE, label="Browse all runs", icon=":material/list:")

st.subheader("Latest fine-tuning result per task and arm")
latest = queries.latest_results(results)
if latest.empty:
    st.info("No finished finetune run yet: `python cli.py finetune --from-run ID` (or `--init scratch`).")
else:
    st.caption("Per task, arm and label fraction: the most recent finished finetune run (test, slice level).")
    st.plotly_chart(plots.latest_results_figure(latest.rename(columns={"fraction": "label_fraction"}),
                                                "test_balanced_accuracy"), key="latest-bars")
    for task, table in latest.groupby("task", sort=True):
        st.markdown(f"**{common.md(task)}**")
        st.dataframe(table[["run_id", "arm", "fraction", "seed", *queries.SUMMARY_METRICS, "created_at"]],
                     hide_index=True, column_config={
                         **common.METRIC_COLUMNS, "run_id": st.column_config.NumberColumn("run", format="%d"),
                         "fraction": st.column_config.NumberColumn("label fraction", format="percent"),
                         "created_at": common.METRIC_COLUMNS["created_at"]})

failed = common.runs(url, status="failed")
if not failed.empty:
    st.subheader(f"Failed runs ({len(failed)})")
    for _, row in failed.head(MAX_FAILED_SHOWN).iterrows():
        task = f" · {common.md(row['task'])}" if isinstance(row["task"], str) else ""
        error = common.md(row["error"]) if row["error"] else "no error recorded"
        st.warning(f"Run #{row['id']} ({common.md(row['kind'])}{task}) failed: {error}")
        st.page_link(common.RUNS_PAGE, label=f"Open run #{row['id']}", query_params={"run": str(row["id"])})
    if len(failed) > MAX_FAILED_SHOWN:
        st.caption(f"… and {len(failed) - MAX_FAILED_SHOWN} more on the Runs page (filter status = failed).")
