"""Embeddings: a stored UMAP / t-SNE map of a run's encoder features, coloured by class, subject, split or source."""

from __future__ import annotations

import html

import streamlit as st

import common
from sslmri_core import plots

COLOR_BY = {"label": "class", "subject": "subject", "split": "split", "source": "source folder"}

url = common.setup_page("Embeddings", "🌌")
st.title("Embeddings")
common.require_runs(url)

available = common.embedding_runs(url)
if available.empty:
    common.empty_state("No embedding stored yet. Compute one for a pretraining or fine-tuning run (once; it is stored):",
                       "python cli.py embed --run ID --method umap   # or --method tsne")

choices = list(zip(available["run_id"].astype(int), available["method"], strict=True))
info = {(int(r["run_id"]), r["method"]): r for _, r in available.iterrows()}
wanted = common.query_run_id()
default = next((i for i, c in enumerate(choices) if c[0] == wanted), 0)
left, right = st.columns([3, 2])
run_id, method = left.selectbox(
    "Run and method", choices, index=default, key="embedding",
    format_func=lambda c: f"#{c[0]} · {info[c]['kind']} · {info[c]['task'] or '—'} · {c[1].upper()} · {info[c]['n']} images",
)
color_by = right.radio("Colour by", list(COLOR_BY), format_func=COLOR_BY.get, horizontal=True, key="color_by")
points = common.embeddings(url, run_id, method)
title = f"{html.escape(method.upper())} of run #{run_id}'s encoder features"  # plotly titles read <a>, <b>
st.plotly_chart(plots.embedding_figure(points, color_by, title, COLOR_BY[color_by]), key="embedding-plot")
st.caption("Each point is one image; nearby points have similar encoder features. Classes that separate here "
           "are easy for a linear probe; a map that clusters by source folder or subject more than by class "
           "hints that the encoder learned acquisition rather than anatomy. Hover a point to see its scan.")
st.page_link(common.RUNS_PAGE, label=f"Open run #{run_id}", query_params={"run": str(run_id)})
with st.expander(f"Points ({len(points)})"):
    st.dataframe(points, hide_index=True)
