"""SSL vs supervised: label-efficiency curves, paired differences and the results table, per experiment.

The statistics come from one experiment's test predictions (sslmri_core.evaluation.stats via queries); runs of
different experiments, and single runs outside any, are never averaged together.
"""

from __future__ import annotations

import html
import shlex

import pandas as pd
import streamlit as st

import common
from sslmri_core import plots
from sslmri_core.store import queries

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

METRIC_NAMES = {
    "test_balanced_accuracy": "balanced accuracy (slice level)",
    "test_subject_balanced_accuracy": "balanced accuracy (subject level)",
    "test_subject_accuracy": "accuracy (subject level)",
}
RUN_COLUMNS = {"run_id": st.column_config.NumberColumn("run", format="%d"),
               "fraction": st.column_config.NumberColumn("fraction", format="percent")}


def show_standalone(runs: pd.DataFrame) -> None:
    """Fine-tuning runs outside any experiment: listed one by one, never averaged with anything."""
    if runs.empty:
        return
    st.subheader(f"Single fine-tuning runs ({len(runs)})")
    st.caption("Not part of an experiment: each is its own split, model and budget, so they are listed, "
               "not averaged into the curves.")
    st.dataframe(runs[["run_id", "arm", "fraction", "seed", "leakage_prone", *queries.RESULT_METRICS["slice"],
                       "created_at"]], hide_index=True, column_config=RUN_COLUMNS)


def per_class(value: object) -> str:
    return ", ".join(f"{c} {n}" for c, n in value.items()) if isinstance(value, dict) else ""


def steps_text(value: object) -> str:
    if isinstance(value, list):
        return "/".join(str(v) for v in value)
    return "—" if value is None or pd.isna(value) else str(int(value))


def display(frame: pd.DataFrame) -> pd.DataFrame:
    """Dict and list cells as text, so the table shows them on every backend."""
    out = frame.assign(fraction=frame["fraction"].map(common.fraction_label), note=frame["note"].fillna(""))
    if "n_test_subjects_per_class" in out:
        out["n_test_subjects_per_class"] = out["n_test_subjects_per_class"].map(per_class)
    if "steps" in out:
        out["steps"] = out["steps"].map(steps_text)
    return out.drop(columns=["experiment_id", "metric"])


tasks = sorted(results["task"].unique())
left, right = st.columns([1, 2])
task = left.selectbox("Task", tasks, key="task")
rows = results[results["task"] == task]
experiment_ids = queries.task_experiments(results, task)
standalone = rows[rows["experiment_id"].isna()]
if not experiment_ids:
    st.info(f"No experiment of task {common.md(task)} yet: curves and paired differences come from one experiment "
            "(every arm x label fraction x seed on one split), never from single runs pooled together.")
    st.code(f"python cli.py experiment --task {shlex.quote(task)} --fractions 0.1,0.5,1.0 --seeds 3", language="bash")
    show_standalone(standalone)
    st.stop()

children = rows["experiment_id"].value_counts()
experiment = right.selectbox("Experiment", experiment_ids, key="experiment",
                             format_func=lambda i: f"#{i} ({children.get(i, 0)} finished runs)")
show_leaky = st.toggle("Show leakage-prone runs (flagged)", key="show_leaky", value=False,
                       help="Leakage-prone runs (image-level split, SSL pretrained on test images, a leaky given "
                            "split) are left out of the means by default.")
summary = common.experiment_statistics(url, int(experiment), bool(show_leaky))
leaky = ", ".join(f"#{r}" for r in summary.leaky_runs)
if summary.leaky_runs and show_leaky:
    st.error(f"{len(summary.leaky_runs)} leakage-prone runs are included; rows they enter are flagged: {leaky}")
elif summary.leaky_runs:
    st.warning(f"{len(summary.leaky_runs)} leakage-prone runs of experiment #{experiment} are left out of the means "
               f"({leaky}); the toggle shows them, flagged.")
mine = rows[rows["experiment_id"] == experiment]
if summary.empty:
    st.info(f"Experiment #{experiment} has no statistics to show: its finished runs stored no test predictions"
            + (" or are all leakage-prone." if summary.leaky_runs else "."))
    show_standalone(standalone)
    st.stop()

metrics = [m for m in METRIC_NAMES if m in set(summary.curves["metric"])]
metric = st.selectbox("Metric", metrics, key="metric", format_func=lambda m: METRIC_NAMES[m],
                      help="Subject-level metrics exist only where every test subject has one label.")
label = METRIC_NAMES[metric]
curves = queries.label_efficiency(summary.curves, metric)
paired = queries.paired_differences(summary.paired, metric)
st.caption(f"Experiment #{experiment}: {len(summary.runs)} runs, {curves['arm'].nunique()} arms, "
           f"{curves['fraction'].nunique()} label fractions. Points: mean over seeds; bars: {summary.interval}. "
           f"{summary.pretraining[:1].upper()}{summary.pretraining[1:]}.")
for note in dict.fromkeys(n for n in curves["note"] if isinstance(n, str) and n):
    st.warning(f"Few test subjects: {common.md(note)}.")

chart_left, chart_right = st.columns(2)
with chart_left:
    title = f"Label efficiency — {html.escape(task)}, experiment #{experiment}"  # plotly titles read <a>, <b>
    st.plotly_chart(plots.label_efficiency_figure(curves, label, title), key="curve")
with chart_right:
    if paired.empty:
        st.info("No paired differences: they need an SSL arm and a baseline (scratch or imagenet) at the same "
                "label fraction and seed.")
    else:
        st.plotly_chart(plots.paired_difference_figure(paired, label), key="paired")

st.subheader("Results")
interval_columns = {
    "mean": st.column_config.NumberColumn("mean", format="%.3f"),
    "lo": st.column_config.NumberColumn("95% CI low", format="%.3f"),
    "hi": st.column_config.NumberColumn("95% CI high", format="%.3f"),
    "n_seeds": st.column_config.NumberColumn("seeds"),
    "n_test_subjects": st.column_config.NumberColumn("test subjects"),
    "n_test_subjects_per_class": st.column_config.TextColumn("test subjects per class"),
}
st.dataframe(display(curves), hide_index=True, column_config=interval_columns)
st.download_button("Download results (CSV)", curves.to_csv(index=False),
                   file_name=f"sslmri-{task}-experiment-{experiment}-{metric}.csv", mime="text/csv")
if not paired.empty:
    st.markdown("**Paired differences: SSL arm minus baseline**")
    st.dataframe(display(paired), hide_index=True, column_config={
        **interval_columns, "mean_diff": st.column_config.NumberColumn("mean difference", format="%+.3f"),
        "lo": st.column_config.NumberColumn("95% CI low", format="%+.3f"),
        "hi": st.column_config.NumberColumn("95% CI high", format="%+.3f"),
        "wins": st.column_config.NumberColumn("SSL better in (seeds)"),
    })
    st.download_button("Download paired differences (CSV)", paired.to_csv(index=False),
                       file_name=f"sslmri-{task}-experiment-{experiment}-{metric}-paired.csv", mime="text/csv")

with st.expander(f"Every run of experiment #{experiment} ({len(mine)})"):
    st.dataframe(mine.drop(columns=["task", "status", "experiment_id"]), hide_index=True, column_config=RUN_COLUMNS)
show_standalone(standalone)
