"""SSL vs supervised: label-efficiency curves, paired differences and the results table, per task."""

from __future__ import annotations

import streamlit as st

import common
from sslmri_core import plots, queries

url = common.setup_page("SSL vs Supervised", "📈")
st.title("SSL vs supervised")
common.require_runs(url)

results = common.finetune_results(url)
if results.empty:
    common.empty_state(
        "No finished fine-tuning run yet: the curves compare arms (SSL linear / SSL full / scratch) over label fractions.",
        "python cli.py experiment --task tumor --fractions 0.1,0.5,1.0 --seeds 3\n"
        "# or single runs: python cli.py finetune --from-run ID --label-fraction 0.1",
    )

tasks = sorted(results["task"].unique())
left, middle, right = st.columns([2, 1, 2])
task = left.selectbox("Task", tasks, key="task")
level = middle.radio("Level", ["slice", "subject"], horizontal=True, key="level",
                     help="Slice: every image counts once. Subject: one prediction per patient (mean of its slices).")
# The metric is chosen by name and the level picks its slice or subject key, so both choices stay put.
choice = right.selectbox("Metric", range(len(queries.RESULT_METRICS["slice"])), key="metric",
                         format_func=lambda i: common.METRIC_LABELS[queries.RESULT_METRICS["slice"][i]])
metric = queries.RESULT_METRICS[level][choice]
label = f"{common.METRIC_LABELS[metric]} ({level} level)"

rows = results[results["task"] == task]
if rows[metric].isna().all():
    st.info(f"No run of task {task} has {level}-level {common.METRIC_LABELS[metric]}; "
            "subject-level metrics come from `python cli.py experiment` (or switch to slice level).")
    st.stop()

leaky = rows[rows["leakage_prone"].astype(bool)]
if not leaky.empty:
    st.error(f"{len(leaky)} of these runs are leakage-prone (image-level split or SSL pretrained on test images): "
             + ", ".join(f"#{r}" for r in leaky["run_id"]))

curves = queries.label_efficiency(rows, metric)
paired = queries.paired_differences(rows, metric)
n_seeds = int(rows["seed"].nunique())
st.caption(f"{len(rows)} finished runs of task **{task}**, {rows['arm'].nunique()} arms, "
           f"{rows['fraction'].nunique()} label fractions, {n_seeds} seed(s). Points: mean over seeds; "
           "bars: 95% t-interval (none with a single seed).")

if rows["fraction"].nunique() < 2 or n_seeds < 2:
    st.info("With " + ("one label fraction" if rows["fraction"].nunique() < 2 else "one seed")
            + " there is no curve or interval to read yet: run the grid (every arm x fraction x seed on one split):")
    st.code(f"python cli.py experiment --task {task} --fractions 0.1,0.5,1.0 --seeds 3", language="bash")

chart_left, chart_right = st.columns(2)
with chart_left:
    st.plotly_chart(plots.label_efficiency_figure(curves, label, f"Label efficiency — {task}"), key="curve")
with chart_right:
    if paired.empty:
        st.info(f"No paired differences: they need a `{queries.REFERENCE_ARM}` run and another arm with the same "
                "label fraction and seed.")
    else:
        st.plotly_chart(plots.paired_difference_figure(paired, label), key="paired")

st.subheader("Results")
table = curves.assign(fraction=curves["fraction"].map(common.fraction_label))
st.dataframe(table.drop(columns=["task", "metric"]), hide_index=True, column_config={
    "mean": st.column_config.NumberColumn("mean", format="%.3f"),
    "lo": st.column_config.NumberColumn("95% CI low", format="%.3f"),
    "hi": st.column_config.NumberColumn("95% CI high", format="%.3f"),
    "sd": st.column_config.NumberColumn("SD", format="%.3f"),
})
st.download_button("Download results (CSV)", curves.to_csv(index=False), file_name=f"sslmri-{task}-{metric}.csv",
                   mime="text/csv")
if not paired.empty:
    st.markdown(f"**Paired differences vs {queries.REFERENCE_ARM}**")
    st.dataframe(paired.assign(fraction=paired["fraction"].map(common.fraction_label)).drop(columns=["task", "metric"]),
                 hide_index=True, column_config={
                     "mean_diff": st.column_config.NumberColumn("mean difference", format="%+.3f"),
                     "lo": st.column_config.NumberColumn("95% CI low", format="%+.3f"),
                     "hi": st.column_config.NumberColumn("95% CI high", format="%+.3f"),
                     "wins": st.column_config.NumberColumn("arm better in"),
                 })
    st.download_button("Download paired differences (CSV)", paired.to_csv(index=False),
                       file_name=f"sslmri-{task}-{metric}-paired.csv", mime="text/csv")

with st.expander(f"Every run ({len(rows)})"):
    st.dataframe(rows.drop(columns=["task", "status"]), hide_index=True,
                 column_config={"run_id": st.column_config.NumberColumn("run", format="%d"),
                                "fraction": st.column_config.NumberColumn("fraction", format="percent")})

experiments = common.experiments(url)
stored = experiments[experiments["task"] == task] if not experiments.empty else experiments
if not stored.empty:
    latest = int(stored.iloc[0]["id"])
    summary = common.run_results(url, latest).get("summary")
    if summary:
        with st.expander(f"Summary stored by experiment #{latest}"):
            st.dataframe(summary, hide_index=True)
