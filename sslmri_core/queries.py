"""Read-only queries over the run store: the only way the dashboard reads data.

Every function takes a store URL (resolved with :func:`sslmri_core.store.resolve_db_url`) or an
engine from :func:`read_engine`, and returns pandas DataFrames, plain dicts or frozen dataclasses;
ORM objects never leave here. Reading never writes: SQLite files are opened with ``mode=ro`` (a
missing file is never created) and migrations are never run. A store that does not exist yet, or
has no ``runs`` table, reads as empty instead of raising.

This module does not import Streamlit; the dashboard caches :func:`read_engine` with
``st.cache_resource`` and query results with ``st.cache_data``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import create_engine, event, func, inspect, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from sslmri_core.store import (
    RUN_STATUSES,
    STALE_ERROR,
    Confusion,
    Metric,
    Param,
    Prediction,
    Run,
    RunRecord,
    effective_status,
    record_from,
    resolve_db_url,
    stale_cutoff,
)

Store = str | Engine | None  # a URL (None: SSLMRI_DB or the default) or an engine from read_engine

# Final metrics shown next to every run; finetune runs write them with step and epoch None.
SUMMARY_METRICS = ("test_accuracy", "test_balanced_accuracy", "test_macro_f1")
# The first of these a run has gives its ``final_loss`` (epoch means are smoother than steps).
LOSS_KEYS = ("epoch_loss", "loss", "train_loss")

RUN_COLUMNS = [
    "id", "kind", "status", "task", "parent_run_id", "model", "init", "mode", "label_fraction",
    *SUMMARY_METRICS, "final_loss", "split_level", "leakage_prone", "created_at", "ended_at", "duration_s",
    "device", "host", "error",
]
LEAK_PARAMS = ("split_level", "ssl_pool_test_overlap")
SERIES_COLUMNS = ["key", "step", "epoch", "value"]
PREDICTION_COLUMNS = ["split", "scan", "subject", "true_label", "pred_label", "confidence", "probs"]
LATEST_COLUMNS = [
    "task", "arm", "init", "mode", "label_fraction", "model", "run_id", "ended_at", *SUMMARY_METRICS,
    "leakage_prone",
]


# -- result types -------------------------------------------------------------------------------
@dataclass(frozen=True)
class StoreStatus:
    """Where the store is and whether it holds anything (``error``: why it could not be read)."""

    url: str
    exists: bool
    n_runs: int
    error: str | None = None

    @property
    def empty(self) -> bool:
        return self.n_runs == 0


@dataclass(frozen=True)
class RunDetail:
    """One run's record (config included) and its text parameters."""

    run: RunRecord
    params: dict[str, str | None]


@dataclass(frozen=True)
class ConfusionMatrix:
    """Counts with rows = true class and columns = predicted class."""

    split: str
    level: str
    labels: list[str]
    matrix: list[list[int]]

    def counts(self) -> pd.DataFrame:
        """The matrix as a labelled frame (index: true, columns: predicted)."""
        return pd.DataFrame(self.matrix, index=self.labels, columns=self.labels, dtype="int64")

    def normalised(self) -> pd.DataFrame:
        """Rows divided by their totals (recall per class on the diagonal); empty rows stay 0."""
        counts = self.counts().astype(float)
        totals = counts.sum(axis=1).replace(0.0, np.nan)
        return counts.div(totals, axis=0).fillna(0.0)


# -- engines ------------------------------------------------------------------------------------
def display_url(url: str | None = None) -> str:
    """The resolved URL with any password masked, for showing to people."""
    resolved = resolve_db_url(url)
    try:
        return make_url(resolved).render_as_string(hide_password=True)
    except SQLAlchemyError:
        return resolved


def sqlite_path(url: str) -> Path | None:
    """Absolute file of a SQLite file URL; None for other databases and in-memory SQLite."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database).expanduser().resolve()


def _read_only_sqlite(path: Path) -> Engine:
    def connect() -> sqlite3.Connection:
        # mode=ro: a write fails and a missing file is an error instead of a new empty store.
        conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=30, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=30000")  # wait for a writing training run, don't fail
        return conn

    # NullPool: every query sees the current file, even if runs.db was replaced meanwhile.
    return create_engine("sqlite://", creator=connect, poolclass=NullPool)


def _read_only_server(url: str) -> Engine:
    engine = create_engine(url, pool_pre_ping=True)
    if engine.dialect.name == "postgresql" and engine.dialect.driver in ("psycopg2", "psycopg"):
        # The server then refuses writes in every transaction this engine opens.
        @event.listens_for(engine, "connect")
        def _read_only(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
            cursor.close()
            dbapi_connection.commit()

    return engine


def read_engine(url: str | None = None) -> Engine:
    """A read-only engine for the store at ``url``; cheap, never touches the database."""
    resolved = resolve_db_url(url)
    path = sqlite_path(resolved)
    return _read_only_sqlite(path) if path is not None else _read_only_server(resolved)


def _engine(store: Store) -> Engine:
    return store if isinstance(store, Engine) else read_engine(store)


def _has_runs(engine: Engine) -> bool:
    """True when the store can be reached and has a ``runs`` table (creating nothing)."""
    try:
        with engine.connect() as conn:
            return inspect(conn).has_table(Run.__tablename__)
    except SQLAlchemyError:
        return False


def _ready(store: Store) -> Engine | None:
    """The engine when the store can be read, else None (missing file, no schema yet)."""
    if isinstance(store, (str, type(None))):
        path = sqlite_path(resolve_db_url(store))
        if path is not None and not path.is_file():
            return None
    engine = _engine(store)
    return engine if _has_runs(engine) else None


# -- store ---------------------------------------------------------------------------------------
def store_status(url: str | None = None) -> StoreStatus:
    """Whether the store exists and how many runs it holds; errors become ``error``, not raises."""
    resolved = resolve_db_url(url)
    shown = display_url(resolved)
    path = sqlite_path(resolved)
    if path is not None and not path.is_file():
        return StoreStatus(url=shown, exists=False, n_runs=0)
    try:
        engine = read_engine(resolved)
        with engine.connect() as conn:
            if not inspect(conn).has_table(Run.__tablename__):
                return StoreStatus(url=shown, exists=True, n_runs=0)
            n_runs = conn.execute(select(func.count()).select_from(Run)).scalar_one()
    except Exception as exc:  # a missing driver or an unreachable server: say so, don't crash the page
        reason = getattr(exc, "orig", None) or exc
        return StoreStatus(url=shown, exists=False, n_runs=0, error=f"{reason.__class__.__name__}: {reason}")
    return StoreStatus(url=shown, exists=True, n_runs=int(n_runs))


def counts_by_kind_status(store: Store = None) -> pd.DataFrame:
    """One row per run kind: a column per status with its count, and ``total`` (silent runs count as interrupted)."""
    columns = ["kind", *RUN_STATUSES, "total"]
    engine = _ready(store)
    if engine is None:
        return pd.DataFrame(columns=columns)
    status = effective_status().label("status")
    stmt = select(Run.kind, status, func.count()).group_by(Run.kind, status)
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    if not rows:
        return pd.DataFrame(columns=columns)
    long = pd.DataFrame(rows, columns=["kind", "status", "n"])
    wide = long.pivot_table(index="kind", columns="status", values="n", aggfunc="sum", fill_value=0)
    wide = wide.reindex(columns=list(RUN_STATUSES), fill_value=0).astype("int64")
    wide["total"] = wide.sum(axis=1)
    return wide.reset_index().rename_axis(columns=None)[columns]


# -- runs ----------------------------------------------------------------------------------------
def _utc(values: pd.Series) -> pd.Series:
    # SQLite hands back naive datetimes; the store writes UTC, so say so.
    return pd.to_datetime(values, utc=True)


def _last_metrics(engine: Engine, keys: Sequence[str], run_ids: Sequence[int] | None = None) -> pd.DataFrame:
    """Last value (by insertion) of each ``keys`` series per run: a frame indexed by run id."""
    last_id = select(func.max(Metric.id)).where(Metric.key.in_(list(keys))).group_by(Metric.run_id, Metric.key)
    if run_ids is not None:
        last_id = last_id.where(Metric.run_id.in_(list(run_ids)))
    stmt = select(Metric.run_id, Metric.key, Metric.value, Metric.is_nan).where(Metric.id.in_(last_id))
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    frame = pd.DataFrame(rows, columns=["run_id", "key", "value", "is_nan"])
    frame["value"] = _restore_nan(frame)
    wide = frame.pivot_table(index="run_id", columns="key", values="value", aggfunc="last", dropna=False)
    return wide.reindex(columns=list(keys))


def _params_wide(engine: Engine, keys: Sequence[str], run_ids: Sequence[int]) -> pd.DataFrame:
    """Selected parameters per run: a frame indexed by run id with one column per key."""
    stmt = select(Param.run_id, Param.key, Param.value).where(
        Param.key.in_(list(keys)), Param.run_id.in_([int(r) for r in run_ids])
    )
    with engine.connect() as conn:
        frame = pd.DataFrame(conn.execute(stmt).all(), columns=["run_id", "key", "value"])
    wide = frame.pivot(index="run_id", columns="key", values="value") if not frame.empty else pd.DataFrame()
    return wide.reindex(columns=list(keys))


def _leakage_prone(params: pd.DataFrame) -> pd.Series:
    """Image-level split (no subject ids), or test images the SSL encoder pretrained on."""
    overlap = pd.to_numeric(params["ssl_pool_test_overlap"], errors="coerce").fillna(0)
    return (params["split_level"] == "image") | (overlap > 0)


def _restore_nan(frame: pd.DataFrame) -> pd.Series:
    values = pd.to_numeric(frame["value"], errors="coerce").astype("float64")
    return values.where(~frame["is_nan"].astype(bool), np.nan)


def _config_columns(configs: pd.Series) -> pd.DataFrame:
    keys = ["model", "init", "mode", "label_fraction"]
    return pd.DataFrame(
        [{k: (c or {}).get(k) for k in keys} for c in configs], columns=keys, index=configs.index
    )


def runs_frame(
    store: Store = None, kind: str | None = None, status: str | None = None, task: str | None = None
) -> pd.DataFrame:
    """All runs (newest first) with config highlights, summary test metrics and final loss.

    ``status`` is what a reader should see: a ``running`` run without a heartbeat for longer than
    the heartbeat timeout shows as ``interrupted`` (its process is gone), with the reason in ``error``.
    """
    engine = _ready(store)
    if engine is None:
        return pd.DataFrame(columns=RUN_COLUMNS)
    cutoff = stale_cutoff()
    shown_status = effective_status(cutoff)
    table_columns = [c for c in Run.__table__.columns if c.name != "status"]
    stmt = select(*table_columns, shown_status.label("status"), Run.status.label("stored_status")).order_by(
        Run.id.desc()
    )
    for column, wanted in ((Run.kind, kind), (shown_status, status), (Run.task, task)):
        if wanted:
            stmt = stmt.where(column == wanted)
    with engine.connect() as conn:
        rows = conn.execute(stmt).mappings().all()
    runs = pd.DataFrame(rows, columns=[*(c.name for c in table_columns), "status", "stored_status"])
    if runs.empty:
        return pd.DataFrame(columns=RUN_COLUMNS)
    stale = (runs["status"] == "interrupted") & (runs["stored_status"] == "running")
    if stale.any():
        last = _utc(runs["heartbeat_at"].fillna(runs["started_at"]).fillna(runs["created_at"]))
        runs["error"] = runs["error"].astype(object)
        runs.loc[stale, "error"] = [STALE_ERROR.format(last=t.isoformat(timespec="seconds")) for t in last[stale]]
    runs = pd.concat([runs, _config_columns(runs["config"])], axis=1)
    last = _last_metrics(engine, [*SUMMARY_METRICS, *LOSS_KEYS], runs["id"].tolist())
    runs = runs.join(last, on="id")
    runs["final_loss"] = runs[list(LOSS_KEYS)].bfill(axis=1).iloc[:, 0].astype("float64")
    runs = runs.join(_params_wide(engine, LEAK_PARAMS, runs["id"].tolist()), on="id")
    runs["leakage_prone"] = _leakage_prone(runs)
    for column in ("created_at", "started_at", "ended_at"):
        runs[column] = _utc(runs[column])
    start = runs["started_at"].fillna(runs["created_at"])
    runs["duration_s"] = (runs["ended_at"] - start).dt.total_seconds()
    runs["label_fraction"] = pd.to_numeric(runs["label_fraction"], errors="coerce")
    runs["parent_run_id"] = runs["parent_run_id"].astype("Int64")
    return runs[RUN_COLUMNS].reset_index(drop=True)


def run_detail(store: Store, run_id: int) -> RunDetail | None:
    """The run's record (with its config) and parameters; None when there is no such run."""
    engine = _ready(store)
    if engine is None:
        return None
    with engine.connect() as conn:
        row = conn.execute(select(Run).where(Run.id == int(run_id))).mappings().first()
        if row is None:
            return None
        params = conn.execute(select(Param.key, Param.value).where(Param.run_id == int(run_id)).order_by(Param.key))
        param_map = {key: value for key, value in params}
    record: RunRecord = record_from(row)  # a silent "running" run reads as interrupted
    return RunDetail(run=record, params=param_map)


def params_frame(detail: RunDetail) -> pd.DataFrame:
    """A run's parameters as a two-column frame (key, value) for display."""
    return pd.DataFrame(sorted(detail.params.items()), columns=["key", "value"])


# -- metrics and evaluation ----------------------------------------------------------------------
def metric_series(store: Store, run_id: int, keys: Sequence[str] | None = None) -> pd.DataFrame:
    """Every metric point of a run in insertion order (columns key, step, epoch, value; NaN kept)."""
    engine = _ready(store)
    if engine is None:
        return pd.DataFrame(columns=SERIES_COLUMNS)
    stmt = select(Metric.key, Metric.step, Metric.epoch, Metric.value, Metric.is_nan).where(
        Metric.run_id == int(run_id)
    )
    if keys is not None:
        stmt = stmt.where(Metric.key.in_(list(keys)))
    with engine.connect() as conn:
        rows = conn.execute(stmt.order_by(Metric.id)).all()
    frame = pd.DataFrame(rows, columns=[*SERIES_COLUMNS, "is_nan"])
    frame["value"] = _restore_nan(frame)
    for column in ("step", "epoch"):
        frame[column] = frame[column].astype("Int64")
    return frame[SERIES_COLUMNS]


def final_metrics(store: Store, run_id: int) -> dict[str, float]:
    """The last value of every metric series of a run (NaN restored)."""
    series = metric_series(store, run_id)
    return {str(k): float(v) for k, v in series.groupby("key", sort=True)["value"].last().items()} if len(series) else {}


def final_metrics_frame(store: Store, run_id: int) -> pd.DataFrame:
    """:func:`final_metrics` as a (metric, value) frame for display."""
    return pd.DataFrame(list(final_metrics(store, run_id).items()), columns=["metric", "value"])


def confusion_views(store: Store, run_id: int) -> list[tuple[str, str]]:
    """The (split, level) pairs a run has confusion matrices for, test first."""
    engine = _ready(store)
    if engine is None:
        return []
    stmt = select(Confusion.split, Confusion.level).where(Confusion.run_id == int(run_id))
    with engine.connect() as conn:
        pairs = [(str(s), str(lv)) for s, lv in conn.execute(stmt)]
    order = {"test": 0, "val": 1, "train": 2}
    return sorted(pairs, key=lambda p: (order.get(p[0], 9), p[0], p[1] != "slice", p[1]))


def confusion(store: Store, run_id: int, split: str = "test", level: str = "slice") -> ConfusionMatrix | None:
    """The run's confusion matrix for ``split``/``level``; None when it has none."""
    engine = _ready(store)
    if engine is None:
        return None
    stmt = select(Confusion.labels, Confusion.matrix).where(
        Confusion.run_id == int(run_id), Confusion.split == split, Confusion.level == level
    )
    with engine.connect() as conn:
        row = conn.execute(stmt).first()
    if row is None:
        return None
    labels, matrix = row
    return ConfusionMatrix(split, level, [str(x) for x in labels], [[int(x) for x in r] for r in matrix])


def predictions_frame(store: Store, run_id: int, split: str | None = None) -> pd.DataFrame:
    """Per-scan predictions of a run (optionally one split), least confident first."""
    engine = _ready(store)
    if engine is None:
        return pd.DataFrame(columns=[*PREDICTION_COLUMNS, "correct"])
    stmt = select(*(getattr(Prediction, c) for c in PREDICTION_COLUMNS)).where(Prediction.run_id == int(run_id))
    if split:
        stmt = stmt.where(Prediction.split == split)
    with engine.connect() as conn:
        rows = conn.execute(stmt.order_by(Prediction.id)).all()
    frame = pd.DataFrame(rows, columns=PREDICTION_COLUMNS)
    frame["correct"] = frame["true_label"] == frame["pred_label"]
    return frame.sort_values("confidence", kind="stable").reset_index(drop=True)


# -- comparisons ---------------------------------------------------------------------------------
def _arm(init: Any, mode: Any) -> str:
    parts = [str(p) for p in (init, mode) if not pd.isna(p)]
    return " · ".join(parts) or "?"


def latest_finetune_by_task(store: Store = None) -> pd.DataFrame:
    """Per task and arm (init, mode, label fraction): the latest finished finetune run's test metrics."""
    runs = runs_frame(store, kind="finetune", status="finished")
    if runs.empty:
        return pd.DataFrame(columns=LATEST_COLUMNS)
    runs = runs.rename(columns={"id": "run_id"})
    runs["task"] = runs["task"].fillna("?")
    runs["arm"] = [_arm(i, m) for i, m in zip(runs["init"], runs["mode"], strict=True)]
    # runs_frame is newest first: the first row of each arm is its latest run.
    latest = runs.drop_duplicates(subset=["task", "arm", "label_fraction"], keep="first")
    latest = latest.sort_values(["task", "arm", "label_fraction"], ascending=[True, True, False], kind="stable")
    return latest[LATEST_COLUMNS].reset_index(drop=True)
