"""Data: each data set's manifest and audit: duplicates, leaks, confounds, bad files, balance."""

from __future__ import annotations

import shlex

import pandas as pd
import streamlit as st

import common
import scan_tools
from sslmri_core import plots
from sslmri_core.store import queries

THUMBS_PER_GROUP = 6
GROUPS_SHOWN = 10
LEAKAGE_NOTE = ("Labels shuffled per subject carry no diagnosis: a score above chance with the image split means the "
                "model recognises patients whose other slices it trained on; split by subject, it stays at chance "
                "(Yagis et al. 2021).")


@st.cache_data(ttl=common.CACHE_TTL_S, show_spinner=False)
def latest_leakage(url: str, dataset_id: int, root: str) -> queries.LeakageDemo | None:
    return queries.latest_leakage(common.engine(url), dataset_id, root)


def leakage_section(url: str, dataset_id: int, root: str, split_level: str) -> None:
    """The data set's latest ``cli.py leakage`` run as a 2x2 bar chart, or the command that makes one."""
    st.markdown("**Leakage demonstration**")
    demo = latest_leakage(url, dataset_id, root)
    if demo is None:
        if split_level == "image":
            st.caption("Needs subject ids in the file names (`--subject-pattern REGEX`): it shuffles labels per subject.")
        else:
            st.caption("Not run yet: one small model trained four ways (split by subject or by image, true or "
                       "per-subject shuffled labels) shows what a leaky split does to a score.")
        st.code(f"python cli.py leakage --data {shlex.quote(root)}", language="bash")
        return
    st.plotly_chart(plots.leakage_figure(demo.frame(), demo.chance, title="Test balanced accuracy"), key="leakage")
    st.caption(f"{LEAKAGE_NOTE} Run #{demo.run_id}.")


url = common.setup_page("Data", "🗂️")
st.title("Data sets and audits")
common.require_runs(url)

datasets = common.datasets(url)
if datasets.empty:
    common.empty_state("No data set recorded yet. Training records its data set; an audit checks it for duplicates, "
                       "leaks and confounds:", "python cli.py data audit DIR   # e.g. ../shared/data/tumor")

labels = {int(r["id"]): f"#{r['id']} · {r['root']} · {r['n_images']} images"
          + (" · audited" if not pd.isna(r["audit_id"]) else " · not audited") for _, r in datasets.iterrows()}
dataset_id = st.selectbox("Data set", list(labels), format_func=labels.get, key="dataset")
detail = common.dataset_detail(url, dataset_id)
if detail is None:
    st.stop()

summary = detail.summary
cols = st.columns(4)
cols[0].metric("Files", common.md(summary.get("files", "—")))  # metric values are markdown
cols[1].metric("Usable images", common.md(summary.get("images", summary.get("usable", "—"))))
unusable = summary.get("unusable")
cols[2].metric("Unusable files", len(unusable) if isinstance(unusable, list) else "—")
cols[3].metric("Split level", common.md(detail.split_level))
if detail.split_level == "image":
    st.error("No subject ids in the file names: splits of this data set are image-level, so one patient's slices "
             "can sit in train and test. Pass `--subject-pattern REGEX` if the names carry an id.")

left, right = st.columns(2)
with left:
    st.plotly_chart(plots.class_balance_figure(detail.classes), key="balance")
audit = detail.audit
with right:
    if audit and audit.get("slices_per_subject"):
        sps = audit["slices_per_subject"]
        st.markdown("**Slices per subject**")
        st.dataframe(pd.DataFrame([{k: v for k, v in sps.items() if not isinstance(v, dict)}]), hide_index=True)
        if isinstance(sps.get("subjects_per_class"), dict):
            st.markdown("**Subjects per class**")
            st.dataframe(pd.Series(sps["subjects_per_class"], name="subjects").rename_axis("class").reset_index(),
                         hide_index=True)
    elif audit:
        st.caption("No subject ids: slices per subject cannot be counted.")

bad = common.unusable_files(url, dataset_id)
st.subheader(f"Files that could not be used ({len(bad)})")
if bad.empty:
    st.caption("Every file was usable.")
else:
    st.dataframe(bad, hide_index=True)

if not audit:
    leakage_section(url, dataset_id, detail.root, detail.split_level)
    st.info("This data set has not been audited yet.")
    st.code(f"python cli.py data audit {shlex.quote(detail.root)}", language="bash")
    st.stop()

st.subheader("Audit")
findings = {
    "exact duplicate groups": audit.get("duplicate_groups", 0),
    "… across classes": audit.get("cross_class_duplicates", 0),
    "… across splits": audit.get("cross_split_duplicates", 0),
    "near-duplicate groups": audit.get("near_duplicate_groups", 0),
    "… across classes ": audit.get("cross_class_near_duplicates", 0),
    "… across splits ": audit.get("cross_split_near_duplicates", 0),
    "subjects in more than one split": audit.get("subject_leaks", 0),
    "subjects in more than one class": audit.get("subjects_spanning_classes", 0),
}
serious = {k: v for k, v in findings.items() if v and ("across" in k or "split" in k)}
if serious:
    st.error("Can inflate test results: "
             + ", ".join(f"{common.md(v)} {k.strip('… ')}" for k, v in serious.items()))
else:
    st.success("No duplicate or subject crosses a split or a class.")
audit_col, leakage_col = st.columns(2)
audit_col.dataframe(pd.DataFrame(list(findings.items()), columns=["finding", "count"]), hide_index=True)
with leakage_col:
    leakage_section(url, dataset_id, detail.root, detail.split_level)

confound = audit.get("confound") or {}
st.markdown("**Acquisition confound**")
reason = common.md(confound["reason"]) if confound.get("reason") else None
if confound.get("flag"):
    st.error(reason or "metadata predicts the class")
elif confound.get("intensity_flag"):
    st.warning(reason or "image intensities predict the class")
else:
    st.caption(reason or "not checked")
conf_table = {k: confound.get(k) for k in ("metadata_accuracy", "file_size_accuracy", "intensity_accuracy",
                                           "majority_rate", "baseline_accuracy", "p_value", "cv")}
st.dataframe(pd.DataFrame([conf_table]), hide_index=True)

details = detail.audit_details or {}
inner = details.get("details", details)
groups = (inner.get("duplicate_groups") or []) + (inner.get("near_duplicate_groups") or [])
st.subheader(f"Duplicate groups ({len(groups)} listed, worst first)")
if not groups:
    st.caption("No duplicates.")
for n, group in enumerate(groups[:GROUPS_SHOWN]):
    flags = [name for name, on in (("across classes", group.get("cross_class")), ("across splits", group.get("cross_split")),
                                   ("across subjects", group.get("cross_subject"))) if on]
    kind = "near-duplicate" if "max_distance" in group else "exact duplicate"
    flagged = ", ".join(flags) or "same class, split and subject"
    with st.expander(f"{kind} group of {common.md(group.get('size'))} · {flagged}",
                     expanded=n == 0 and bool(flags)):
        keys = list(group.get("keys", []))[:THUMBS_PER_GROUP]
        paths = common.manifest_paths(url, dataset_id, tuple(keys))
        thumbs = st.columns(max(1, len(keys)))
        for i, key in enumerate(keys):
            label = group.get("labels", [None] * len(keys))[i]
            split = (group.get("splits") or [None] * len(keys))[i]
            try:
                img = scan_tools.load_scan(paths.get(key, key), [detail.root], 128)
                thumbs[i].image(img, caption=f"{common.md(label)} · {common.md(split or '—')}", width=128)
            except Exception as exc:
                thumbs[i].caption(f"{common.md(str(key).rsplit('/', 1)[-1])}: not shown ({exc.__class__.__name__})")
        st.dataframe(pd.DataFrame({k: group.get(k, [])[:len(group.get("keys", []))] for k in ("keys", "labels", "splits", "subjects")
                                   if group.get(k)}), hide_index=True)

leaks = inner.get("subject_leaks") or []
if leaks:
    st.subheader(f"Subjects in more than one split ({len(leaks)})")
    st.dataframe(pd.DataFrame(leaks), hide_index=True)
