"""Confusion matrices: one run's for a split and level, or two runs side by side and their difference."""

from __future__ import annotations

import pandas as pd
import streamlit as st

import common
from sslmri_core import plots

url = common.setup_page("Confusion", "🔢")
st.title("Confusion matrices")
common.require_runs(url)

runs = common.runs(url)
with_cm = common.runs_with_confusion(url)
if not with_cm:
    common.empty_state("No run has a confusion matrix yet; every fine-tuning run stores one for val and test.",
                       "python cli.py finetune --from-run ID   # or --init scratch")

labels = {int(row["id"]): common.run_label(row) + (f" · {row['init']}-{row['mode']}" if isinstance(row["init"], str) else "")
          for row in runs[runs["id"].isin(with_cm)].to_dict("records")}
wanted = common.query_run_id()
first = wanted if wanted in with_cm else with_cm[0]

top = st.columns([3, 3, 2, 2])
run_a = top[0].selectbox("Run", with_cm, index=with_cm.index(first), format_func=labels.get, key="run_a")
compare = top[1].selectbox("Compare with", [None, *[r for r in with_cm if r != run_a]], key="run_b",
                           format_func=lambda r: "(no comparison)" if r is None else labels[r])
views = common.confusion_views(url, run_a)
split, level = top[2].selectbox("Split / level", views, format_func=lambda v: f"{v[0]} / {v[1]}", key="view")
normalise = top[3].toggle("Row-normalised", value=True, key="normalise",
                          help="Each true-class row divided by its total: the diagonal is each class's recall")

cm_a = common.confusion(url, run_a, split, level)
cm_b = common.confusion(url, compare, split, level) if compare is not None else None
if compare is not None and cm_b is None:
    st.warning(f"Run #{compare} has no {common.md(split)}/{common.md(level)} matrix to compare with.")

def recall_table(cm: object) -> pd.DataFrame:
    counts = cm.counts()  # type: ignore[attr-defined]
    support = counts.sum(axis=1)
    return pd.DataFrame({"class": counts.index, "images": support.to_numpy(),
                         "recall": (pd.Series(counts.to_numpy().diagonal(), index=counts.index) / support.replace(0, pd.NA)).to_numpy()})

if cm_b is None:
    st.plotly_chart(plots.confusion_figure(cm_a, normalise), key="cm-a")
    st.dataframe(recall_table(cm_a), hide_index=True,
                 column_config={"recall": st.column_config.NumberColumn("recall", format="%.3f")})
else:
    # Two per row: three 4x4 heat maps in one row squeeze their labels and titles unreadably.
    a_col, b_col = st.columns(2)
    with a_col:
        st.markdown(f"**Run #{run_a}**")
        st.plotly_chart(plots.confusion_figure(cm_a, normalise), key="cm-a")
    with b_col:
        st.markdown(f"**Run #{compare}**")
        st.plotly_chart(plots.confusion_figure(cm_b, normalise), key="cm-b")
    d_col, note = st.columns(2)
    with d_col:
        st.markdown("**Difference**")
        st.plotly_chart(plots.confusion_difference_figure(cm_a, cm_b, normalise, (f"#{run_a}", f"#{compare}")),
                        key="cm-diff")
    note.caption(f"Red: run #{compare} puts more of that true class in that column than run #{run_a}; blue: fewer. "
                 "On the diagonal, red means better recall.")
    if set(cm_a.labels) != set(cm_b.labels):
        st.warning("The two runs have different classes; the difference uses the classes they share.")
st.page_link(common.RUNS_PAGE, label=f"Open run #{run_a}", query_params={"run": str(run_a)})
