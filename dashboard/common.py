"""Shared dashboard pieces: page setup, the store URL, cached read-only queries, empty states.

Streamlit puts the main script's folder (``dashboard/``) on ``sys.path`` for every page, so pages
import this module as ``common``. Data comes only from :mod:`sslmri_core.store.queries`; results are
cached for a few seconds so the dashboard follows runs that are still training.
"""

from __future__ import annotations

import re

import pandas as pd
import streamlit as st
from sqlalchemy.engine import Engine

from sslmri_core.errors import UsageError
from sslmri_core.store import queries
from sslmri_core.store.engine import display_url, read_engine, resolve_db_url
from sslmri_core.store.status import check_environment

CACHE_TTL_S = 10
RUNS_PAGE = "pages/1_Runs.py"
EMPTY_HELP = """\
Nothing has been recorded yet. Fill the store from the project folder:

```bash
make demo                                   # install, pretrain + finetune on built-in data, open this
# or step by step:
python cli.py pretrain                      # SimCLR pretraining, prints the run id
python cli.py finetune --from-run ID        # fine-tune a classifier from that run
```

Runs go to `SSLMRI_DB` (default `sqlite:///runs.db` in the working folder); start the dashboard
with the same `SSLMRI_DB`.
"""


def setup_page(title: str, icon: str) -> str:
    """Configure the page, show the sidebar store box and return the store URL."""
    st.set_page_config(page_title=f"sslmri · {title}", page_icon=icon, layout="wide")
    url = store_url()
    with st.sidebar:
        st.caption(f"Run store: `{display_url(url)}`")
        if st.button("Reload data", help=f"Query results are cached for {CACHE_TTL_S} s"):
            st.cache_data.clear()
    return url


def store_url() -> str:
    """``SSLMRI_DB`` or ``sqlite:///runs.db`` (relative to the folder the dashboard runs in).

    A bad ``SSLMRI_DB`` or heartbeat setting is shown as one error (naming the variable and what
    it allows) and stops the page, instead of a traceback on every page.
    """
    try:
        url = resolve_db_url(None)
        check_environment()
    except UsageError as exc:  # its message names the variable, with any password masked
        st.error(f"{exc}. Fix it and restart the dashboard.")
        st.stop()
    return url


@st.cache_resource(show_spinner=False)
def engine(url: str) -> Engine:
    """One read-only engine per store URL for the life of the server."""
    return read_engine(url)


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def store_status(url: str) -> queries.StoreStatus:
    return queries.store_status(url)


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def runs(url: str, kind: str | None = None, status: str | None = None, task: str | None = None) -> pd.DataFrame:
    return queries.runs_frame(engine(url), kind=kind, status=status, task=task)


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def counts(url: str) -> pd.DataFrame:
    return queries.counts_by_kind_status(engine(url))


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def latest_finetune(url: str) -> pd.DataFrame:
    return queries.latest_finetune_by_task(engine(url))


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def run_detail(url: str, run_id: int) -> queries.RunDetail | None:
    return queries.run_detail(engine(url), run_id)


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def metric_series(url: str, run_id: int) -> pd.DataFrame:
    return queries.metric_series(engine(url), run_id)


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def final_metrics(url: str, run_id: int) -> pd.DataFrame:
    return queries.final_metrics_frame(engine(url), run_id)


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def confusion_views(url: str, run_id: int) -> list[tuple[str, str]]:
    return queries.confusion_views(engine(url), run_id)


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def confusion(url: str, run_id: int, split: str, level: str) -> queries.ConfusionMatrix | None:
    return queries.confusion(engine(url), run_id, split=split, level=level)


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def predictions(url: str, run_id: int) -> pd.DataFrame:
    return queries.predictions_frame(engine(url), run_id)


def require_runs(url: str) -> queries.StoreStatus:
    """The store's status; shows the error or the empty state and stops the page if no runs."""
    status = store_status(url)
    if status.error:
        st.error(f"Cannot read the run store `{status.url}`: {status.error}")
        st.stop()
    if status.empty:
        where = "does not exist yet" if not status.exists else "has no runs yet"
        st.info(f"The run store `{status.url}` {where}.")
        st.markdown(EMPTY_HELP)
        st.stop()
    return status


def run_label(row: pd.Series) -> str:
    """``#7 · finetune · tumor · finished`` for pickers and links."""
    task = row["task"] if isinstance(row["task"], str) else "—"
    return f"#{row['id']} · {row['kind']} · {task} · {row['status']}"


METRIC_COLUMNS = {
    "test_accuracy": st.column_config.NumberColumn("test accuracy", format="%.3f"),
    "test_balanced_accuracy": st.column_config.NumberColumn("test bal. accuracy", format="%.3f"),
    "test_macro_f1": st.column_config.NumberColumn("test macro F1", format="%.3f"),
    "final_loss": st.column_config.NumberColumn("final loss", format="%.4f"),
    "label_fraction": st.column_config.NumberColumn("label fraction", format="percent"),
    "duration_s": st.column_config.NumberColumn("duration (s)", format="%.0f"),
    "value": st.column_config.NumberColumn("value", format="%.4f"),
    "parent_run_id": st.column_config.NumberColumn("parent", format="%d"),
    "created_at": st.column_config.DatetimeColumn("created (UTC)", format="YYYY-MM-DD HH:mm"),
}


# -- pages beyond Home and Runs ------------------------------------------------------------------
PAGES = {
    "ssl": "pages/2_SSL_vs_Supervised.py",
    "confusion": "pages/3_Confusion.py",
    "scans": "pages/4_Scan_Explorer.py",
    "embeddings": "pages/5_Embeddings.py",
    "data": "pages/6_Data.py",
}
METRIC_LABELS = {
    "test_balanced_accuracy": "balanced accuracy", "test_accuracy": "accuracy", "test_macro_f1": "macro F1",
    "test_subject_balanced_accuracy": "balanced accuracy", "test_subject_accuracy": "accuracy",
    "test_subject_macro_f1": "macro F1",
}


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def finetune_results(url: str) -> pd.DataFrame:
    return queries.finetune_results(engine(url))


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def experiments(url: str) -> pd.DataFrame:
    return queries.experiments_frame(engine(url))


@st.cache_data(ttl=CACHE_TTL_S, show_spinner="Bootstrapping over test subjects…")
def experiment_statistics(url: str, experiment_id: int, include_leaky: bool = False) -> queries.ExperimentStatistics:
    return queries.experiment_statistics(engine(url), experiment_id, include_leaky=include_leaky)


@st.cache_data(ttl=CACHE_TTL_S, show_spinner="Bootstrapping over test subjects…")
def full_label_results(url: str) -> pd.DataFrame:
    return queries.full_label_results(engine(url))


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def run_results(url: str, run_id: int) -> dict:
    return queries.run_results(engine(url), run_id)


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def scan_runs(url: str) -> pd.DataFrame:
    return queries.runs_with_predictions(engine(url))


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def data_roots(url: str, run_id: int) -> list[str]:
    return queries.run_data_roots(engine(url), run_id)


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def cam_stats(url: str, model_run_id: int) -> pd.DataFrame:
    return queries.cam_stats_frame(engine(url), model_run_id)


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def embedding_runs(url: str) -> pd.DataFrame:
    return queries.embedding_runs(engine(url))


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def embeddings(url: str, run_id: int, method: str) -> pd.DataFrame:
    return queries.embeddings_frame(engine(url), run_id, method)


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def datasets(url: str) -> pd.DataFrame:
    return queries.datasets_frame(engine(url))


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def dataset_detail(url: str, dataset_id: int) -> queries.DatasetDetail | None:
    return queries.dataset_detail(engine(url), dataset_id)


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def unusable_files(url: str, dataset_id: int) -> pd.DataFrame:
    return queries.unusable_files(engine(url), dataset_id)


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def manifest_paths(url: str, dataset_id: int, keys: tuple[str, ...]) -> dict[str, str]:
    return queries.manifest_paths(engine(url), dataset_id, list(keys))


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def audit_warnings(url: str) -> list[str]:
    return queries.audit_warnings(engine(url))


def empty_state(message: str, command: str) -> None:
    """What is missing and the command that fills it; stops the page."""
    st.info(message)
    st.code(command, language="bash")
    st.stop()


def fraction_label(value: float) -> str:
    return "—" if pd.isna(value) else f"{value:.0%}" if value >= 0.01 else f"{value:.1%}"


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def runs_with_confusion(url: str) -> list[int]:
    return queries.runs_with_confusion(engine(url))


# -- text from the user (?run=, upload names) and from the store, shown as plain text -------------------
RUN_PARAM_HELP = "?run= must be a run id (a whole number)"
_RUN_ID = re.compile(r"[0-9]{1,18}")  # ASCII digits only: str.isdigit() also takes superscripts and other scripts
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\](){}#+\-.!|<>~$:=&])")


def parse_run_id(value: object) -> int | None:
    """A ``?run=`` value as a run id (ASCII digits, 1 to 2**63 - 1), else None."""
    if not isinstance(value, str) or _RUN_ID.fullmatch(value) is None:
        return None
    run_id = int(value)
    return run_id if 1 <= run_id <= 2**63 - 1 else None


def query_run_id() -> int | None:
    """The run ``?run=`` asks for, None if none; a value that is not a run id gets one warning (the page
    then shows its default)."""
    raw = st.query_params.get("run")
    if raw is None or raw == "":
        return None
    run_id = parse_run_id(raw)
    if run_id is None:
        st.warning(RUN_PARAM_HELP)
    return run_id


def md(value: object) -> str:
    """``value`` as literal text inside Streamlit markdown (markdown, caption, alerts, headers, labels):
    every character that could make a link, emphasis, heading, directive, LaTeX or HTML is escaped."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", str(value))


def code(value: object) -> str:
    """``value`` as inline code in markdown (nothing inside is markdown), whatever backticks it holds."""
    text = str(value).replace("\n", " ")
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def slice_positions(url: str, run_id: int) -> dict[str, float | None]:
    return queries.slice_positions(engine(url), run_id)
