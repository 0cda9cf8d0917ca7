"""Read-only queries over the run store: the only way the dashboard reads data.

Every function takes a store URL (resolved with :func:`sslmri_core.store.writer.resolve_db_url`) or an
engine from :func:`read_engine`, and returns pandas DataFrames, plain dicts or frozen dataclasses;
ORM objects never leave here. Reading never writes: SQLite files are opened with ``mode=ro`` (a
missing file is never created) and migrations are never run. A store that does not exist yet, or
has no ``runs`` table, reads as empty instead of raising.

This module does not import Streamlit; the dashboard caches :func:`read_engine` with
``st.cache_resource`` and query results with ``st.cache_data``.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import case, create_engine, event, func, inspect, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from sslmri_core.evaluation import stats
from sslmri_core.store.writer import (
    RUN_STATUSES,
    STALE_ERROR,
    Audit,
    CamStat,
    Confusion,
    Dataset,
    Embedding,
    ManifestEntry,
    Metric,
    Param,
    Prediction,
    Result,
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
    "id", "kind", "status", "task", "parent_run_id", "model", "init", "mode", "arm", "label_fraction", "seed",
    *SUMMARY_METRICS, "final_loss", "split_level", "leakage_prone", "created_at", "ended_at", "duration_s",
    "device", "host", "error",
]
LEAK_PARAMS = ("split_level", "ssl_pool_test_overlap", "leakage_reasons")
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
    long = pd.DataFrame(_tuples(rows), columns=["kind", "status", "n"])
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
    frame = pd.DataFrame(_tuples(rows), columns=["run_id", "key", "value", "is_nan"])
    frame["value"] = _restore_nan(frame)
    wide = frame.pivot_table(index="run_id", columns="key", values="value", aggfunc="last", dropna=False)
    return wide.reindex(columns=list(keys))


def _params_wide(engine: Engine, keys: Sequence[str], run_ids: Sequence[int] | None) -> pd.DataFrame:
    """Selected parameters per run (``run_ids`` None: every run): a frame indexed by run id, one column per key."""
    stmt = select(Param.run_id, Param.key, Param.value).where(Param.key.in_(list(keys)))
    if run_ids is not None:
        stmt = stmt.where(Param.run_id.in_([int(r) for r in run_ids]))
    with engine.connect() as conn:
        frame = pd.DataFrame(_tuples(conn.execute(stmt).all()), columns=["run_id", "key", "value"])
    wide = frame.pivot(index="run_id", columns="key", values="value") if not frame.empty else pd.DataFrame()
    return wide.reindex(columns=list(keys))


def _leakage_prone(params: pd.DataFrame) -> pd.Series:
    """A run's ``leakage_reasons`` (a JSON list) is not empty, or (runs from before that param) its split
    is image-level (no subject ids) or its SSL encoder pretrained on test images."""
    overlap = pd.to_numeric(params["ssl_pool_test_overlap"], errors="coerce").fillna(0)
    reasons = params["leakage_reasons"].map(_has_reasons) if "leakage_reasons" in params else False
    return ((params["split_level"] == "image") | (overlap > 0) | reasons).astype(bool)


def _has_reasons(value: Any) -> bool:
    """True for a non-empty JSON list (or any other non-empty text: a reason it could not parse)."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return False
    try:
        return bool(json.loads(value))
    except (TypeError, ValueError):
        return bool(str(value).strip())


def _tuples(rows: Sequence[Any]) -> list[tuple[Any, ...]]:
    # pandas probes SQLAlchemy Row objects attribute by attribute (slow: 0.2 s per 20,000 rows); tuples are instant.
    return [tuple(r) for r in rows]


def _restore_nan(frame: pd.DataFrame) -> pd.Series:
    values = pd.to_numeric(frame["value"], errors="coerce").astype("float64")
    return values.where(~frame["is_nan"].astype(bool), np.nan)


def _config_columns(configs: pd.Series) -> pd.DataFrame:
    keys = ["model", "init", "mode", "label_fraction", "seed"]
    frame = pd.DataFrame(
        [{k: (c or {}).get(k) for k in keys} for c in configs], columns=keys, index=configs.index
    )
    frame["seed"] = pd.to_numeric(frame["seed"], errors="coerce").astype("Int64")
    return frame


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
        rows = conn.execute(stmt).all()
    runs = pd.DataFrame(_tuples(rows), columns=[*(c.name for c in table_columns), "status", "stored_status"])
    if runs.empty:
        return pd.DataFrame(columns=RUN_COLUMNS)
    stale = (runs["status"] == "interrupted") & (runs["stored_status"] == "running")
    if stale.any():
        last = _utc(runs["heartbeat_at"].fillna(runs["started_at"]).fillna(runs["created_at"]))
        runs["error"] = runs["error"].astype(object)
        runs.loc[stale, "error"] = [STALE_ERROR.format(last=t.isoformat(timespec="seconds")) for t in last[stale]]
    runs = pd.concat([runs, _config_columns(runs["config"])], axis=1)
    # Unfiltered: read the few keys for every run (a long IN list costs more than it saves).
    ids = runs["id"].tolist() if (kind or status or task) else None
    last = _last_metrics(engine, [*SUMMARY_METRICS, *LOSS_KEYS], ids)
    runs = runs.join(last, on="id")
    runs["final_loss"] = runs[list(LOSS_KEYS)].bfill(axis=1).iloc[:, 0].astype("float64")
    wide = _params_wide(engine, (*LEAK_PARAMS, "arm"), ids)
    runs = runs.join(wide[list(LEAK_PARAMS)], on="id")
    runs["leakage_prone"] = _leakage_prone(runs)
    runs["arm"] = runs["id"].map(wide["arm"])
    derived = pd.Series([derive_arm(i, m) for i, m in zip(runs["init"], runs["mode"], strict=True)], index=runs.index)
    runs["arm"] = runs["arm"].where(runs["arm"].notna(), derived.where(runs["kind"] == "finetune"))
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
    frame = pd.DataFrame(_tuples(rows), columns=[*SERIES_COLUMNS, "is_nan"])
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
    frame = pd.DataFrame(_tuples(rows), columns=PREDICTION_COLUMNS)
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


# -- experiments: arms, label fractions, seeds ------------------------------------------------------
# Metrics a finetune run reports at slice and subject level (the experiment command's names).
RESULT_METRICS = {
    "slice": ("test_balanced_accuracy", "test_accuracy", "test_macro_f1"),
    "subject": ("test_subject_balanced_accuracy", "test_subject_accuracy", "test_subject_macro_f1"),
}
ARM_ORDER = stats.ARM_ORDER
RESULT_COLUMNS = [
    "run_id", "task", "arm", "fraction", "seed", "fold", "experiment_id", "status", "leakage_prone", "steps",
    "created_at", *RESULT_METRICS["slice"], *RESULT_METRICS["subject"],
]
# What the experiment statistics give per arm x fraction (CURVE) and per SSL arm minus baseline (PAIRED).
CURVE_COLUMNS = ["experiment_id", "arm", "fraction", "metric", "mean", "lo", "hi", "ci_method", "n_seeds",
                 "n_test_subjects", "n_test_subjects_per_class", "steps", "few_subjects", "note", "leakage_prone"]
PAIRED_COLUMNS = ["experiment_id", "arm", "baseline", "fraction", "metric", "mean_diff", "lo", "hi", "ci_method",
                  "n_seeds", "n_test_subjects", "wins", "few_subjects", "note", "leakage_prone"]
EXPERIMENT_FRAME_COLUMNS = [*stats.FRAME_COLUMNS, "steps", "leakage_prone"]
FULL_LABEL_COLUMNS = ["task", "experiment_id", "arm", "fraction", "metric", "mean", "lo", "hi", "n_seeds",
                      "n_test_subjects", "few_subjects", "note"]
RUN_PARAMS = ("arm", "fraction", "seed", "optimizer_steps", "classes", *LEAK_PARAMS)


def derive_arm(init: Any, mode: Any) -> str:
    """``ssl-linear`` / ``ssl-full`` / ``scratch`` / ``imagenet`` from a finetune config."""
    init = None if pd.isna(init) else str(init)
    mode = None if pd.isna(mode) else str(mode)
    if init == "ssl":
        return f"ssl-{mode or 'full'}"
    return init or "?"


def _finetune_runs(engine: Engine, where: Sequence[Any]) -> pd.DataFrame:
    """Finished finetune runs matching ``where`` with arm, fraction, seed, fold, steps and leakage (one row each).

    ``arm``/``fraction``/``seed`` come from the run's params when it wrote them, else from its config
    (``init``+``mode``, ``label_fraction``, ``seed``); ``fold`` from the config (None: no cross-validation).
    """
    stmt = select(Run.id, Run.task, Run.status, Run.parent_run_id, Run.config, Run.created_at).where(
        Run.kind == "finetune", Run.status == "finished", *where).order_by(Run.id)
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    frame = pd.DataFrame(_tuples(rows), columns=["run_id", "task", "status", "parent_run_id", "config", "created_at"])
    if frame.empty:
        return frame
    frame = frame.join(_params_wide(engine, RUN_PARAMS, frame["run_id"].tolist()), on="run_id")
    configs = frame["config"].map(lambda c: c or {})
    derived = [derive_arm(c.get("init"), c.get("mode")) for c in configs]
    frame["arm"] = frame["arm"].where(frame["arm"].notna(), pd.Series(derived, index=frame.index)).astype(object)
    frame["fraction"] = pd.to_numeric(frame["fraction"], errors="coerce").fillna(
        pd.to_numeric(configs.map(lambda c: c.get("label_fraction")), errors="coerce")).astype("float64")
    frame["seed"] = pd.to_numeric(frame["seed"], errors="coerce").fillna(
        pd.to_numeric(configs.map(lambda c: c.get("seed")), errors="coerce")).astype("Int64")
    frame["fold"] = pd.to_numeric(configs.map(lambda c: c.get("fold")), errors="coerce").astype("Int64")
    frame["steps"] = pd.to_numeric(frame["optimizer_steps"], errors="coerce").astype("Int64")  # None before it existed
    frame["task"] = frame["task"].fillna("?")
    frame["leakage_prone"] = _leakage_prone(frame)
    return frame


def finetune_results(store: Store = None, task: str | None = None) -> pd.DataFrame:
    """Finished finetune runs, one row each: task, arm, label fraction, seed, fold, parent experiment, steps,
    leakage, test metrics (the runs' last values; a run without subject metrics has NaN there).

    A listing, not a summary: runs of different experiments (or none) are never averaged here.
    """
    engine = _ready(store)
    if engine is None:
        return pd.DataFrame(columns=RESULT_COLUMNS)
    frame = _finetune_runs(engine, [Run.task == task] if task else [])
    if frame.empty:
        return pd.DataFrame(columns=RESULT_COLUMNS)
    with engine.connect() as conn:
        parents = {int(i) for i in conn.execute(select(Run.id).where(Run.kind == "experiment")).scalars()}
    frame["experiment_id"] = frame["parent_run_id"].map(
        lambda p: int(p) if not pd.isna(p) and int(p) in parents else pd.NA).astype("Int64")
    frame["created_at"] = _utc(frame["created_at"])
    keys = [*RESULT_METRICS["slice"], *RESULT_METRICS["subject"]]
    frame = frame.join(_last_metrics(engine, keys, frame["run_id"].tolist()), on="run_id")
    return frame[RESULT_COLUMNS].reset_index(drop=True)


def task_experiments(results: pd.DataFrame, task: str) -> list[int]:
    """Experiments of ``task`` with at least one finished child in ``results`` (:func:`finetune_results`), newest first."""
    ids = results.loc[results["task"] == task, "experiment_id"].dropna()
    return sorted({int(i) for i in ids}, reverse=True)


def experiment_predictions(store: Store, experiment_id: int, include_leaky: bool = True) -> pd.DataFrame:
    """Per-scan test predictions of an experiment's finished children (the latest run per arm, fraction,
    seed and fold): the frame :func:`sslmri_core.evaluation.stats.summarise_predictions` takes.

    Columns :data:`EXPERIMENT_FRAME_COLUMNS`; ``attrs["classes"]`` is the class order of ``probs``.
    ``include_leaky=False`` leaves out leakage-prone children.
    """
    engine = _ready(store)
    empty = pd.DataFrame(columns=EXPERIMENT_FRAME_COLUMNS)
    if engine is None:
        return empty
    runs = _finetune_runs(engine, [Run.parent_run_id == int(experiment_id)])
    if runs.empty:
        return empty
    runs = runs.sort_values("run_id").drop_duplicates(["arm", "fraction", "seed", "fold"], keep="last")
    runs = runs if include_leaky else runs[~runs["leakage_prone"]]
    stmt = select(Prediction.run_id, Prediction.scan, Prediction.subject, Prediction.group_key, Prediction.true_label,
                  Prediction.pred_label, Prediction.probs).where(Prediction.run_id.in_([int(r) for r in runs["run_id"]]),
                                          Prediction.split == "test").order_by(Prediction.id)
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    preds = pd.DataFrame(_tuples(rows), columns=["run_id", "scan", "subject", "group", "true_label", "pred_label", "probs"])
    cells = runs[["run_id", "arm", "fraction", "seed", "fold", "steps", "leakage_prone"]]
    frame = preds.merge(cells, on="run_id", how="inner")[EXPERIMENT_FRAME_COLUMNS].reset_index(drop=True)
    frame.attrs["classes"] = _classes(runs["classes"])
    return frame


def _classes(values: pd.Series) -> list[str] | None:
    """The class order of the runs' ``classes`` params (JSON lists); None when unknown or they disagree."""
    found = {v for v in values.dropna()}
    if len(found) != 1:
        return None
    try:
        return [str(c) for c in json.loads(found.pop())]
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class ExperimentStatistics:
    """One experiment's curves and paired differences from :mod:`sslmri_core.evaluation.stats` (never mixed with other runs)."""

    experiment_id: int
    curves: pd.DataFrame  # CURVE_COLUMNS: per arm x fraction x metric
    paired: pd.DataFrame  # PAIRED_COLUMNS: per SSL arm x baseline x fraction x metric
    runs: list[int]  # children whose predictions went in
    leaky_runs: list[int]  # leakage-prone children (left out unless asked for)
    fractions: list[float]  # the grid's label fractions, as configured (named before any result)
    interval: str
    pretraining: str

    @property
    def empty(self) -> bool:
        return self.curves.empty


def _experiment_config(engine: Engine, experiment_id: int) -> dict[str, Any]:
    with engine.connect() as conn:
        config = conn.execute(select(Run.config).where(Run.id == int(experiment_id))).scalar_one_or_none()
    return dict(config or {})


def experiment_statistics(
    store: Store, experiment_id: int, include_leaky: bool = False, n_boot: int | None = None, seed: int = 0
) -> ExperimentStatistics:
    """Curves and paired SSL-minus-baseline differences of one experiment (stratified subject bootstrap,
    ``n_boot`` default: the experiment's ``bootstrap`` setting, so the numbers match its CLI summary).

    Leakage-prone children are left out unless ``include_leaky``; then their rows are flagged.
    """
    frame = experiment_predictions(store, experiment_id, include_leaky=True)
    engine = _ready(store)
    config = _experiment_config(engine, experiment_id) if engine is not None else {}
    leaky = sorted({int(r) for r in frame.loc[frame["leakage_prone"].astype(bool), "run_id"]})
    used = frame if include_leaky else frame[~frame["leakage_prone"].astype(bool)]
    boots = int(config.get("bootstrap", 1000) if n_boot is None else n_boot)
    out = stats.summarise_predictions(used, classes=frame.attrs.get("classes"), n_boot=boots, seed=seed)
    flagged = used.loc[used["leakage_prone"].astype(bool), ["arm", "fraction"]]
    flags = {(str(a), float(f)) for a, f in flagged.itertuples(index=False)}
    curves = _rows_frame(out["summary"], experiment_id, flags, CURVE_COLUMNS)
    paired = _rows_frame(out["paired"], experiment_id, flags, PAIRED_COLUMNS)
    fractions = sorted(float(f) for f in config.get("fractions") or used["fraction"].unique())
    return ExperimentStatistics(int(experiment_id), curves, paired, sorted({int(r) for r in used["run_id"]}), leaky,
                                fractions, out["interval"], out["pretraining"])


def _rows_frame(rows: list[dict[str, Any]], experiment_id: int, leaky: set[tuple[str, float]],
                columns: list[str]) -> pd.DataFrame:
    """Stats rows as a frame: ``ci`` split into ``lo``/``hi``, flagged where a leakage-prone run went in."""
    if not rows:
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame(rows)
    frame["lo"] = pd.to_numeric(frame["ci"].map(lambda c: c[0]), errors="coerce").astype("float64")
    frame["hi"] = pd.to_numeric(frame["ci"].map(lambda c: c[1]), errors="coerce").astype("float64")
    frame["experiment_id"] = int(experiment_id)
    arms = [frame["arm"], frame["baseline"]] if "baseline" in frame else [frame["arm"]]
    frame["leakage_prone"] = np.logical_or.reduce(
        [[(a, float(f)) in leaky for a, f in zip(arm, frame["fraction"], strict=True)] for arm in arms])
    return frame.rename(columns={"mean": "mean_diff"} if "baseline" in frame else {})[columns]


def label_efficiency(curves: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One metric's rows of :attr:`ExperimentStatistics.curves`, in arm order then by fraction."""
    return _arm_sorted(curves[curves["metric"] == metric]) if not curves.empty else curves


def paired_differences(paired: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One metric's rows of :attr:`ExperimentStatistics.paired`, in arm order then by fraction."""
    return _arm_sorted(paired[paired["metric"] == metric]) if not paired.empty else paired


def _arm_sorted(frame: pd.DataFrame) -> pd.DataFrame:
    rank = {a: i for i, a in enumerate(ARM_ORDER)}
    order = frame["arm"].map(lambda a: rank.get(a, len(rank)))
    keys = [k for k in ("task", "_o", "arm", "baseline", "fraction") if k in frame or k == "_o"]
    return frame.assign(_o=order).sort_values(keys).drop(columns="_o").reset_index(drop=True)


def latest_results(results: pd.DataFrame) -> pd.DataFrame:
    """Per task, arm and label fraction, the latest run of :func:`finetune_results` (by run id)."""
    if results.empty:
        return results
    latest = results.sort_values("run_id", ascending=False).drop_duplicates(["task", "arm", "fraction"])
    return _arm_sorted(latest.assign(_f=-latest["fraction"]).sort_values(["task", "_f"]).drop(columns="_f"))


def headline_fraction(fractions: Sequence[float]) -> float | None:
    """The label fraction a headline shows: full labels (1.0), else the grid's largest; fixed by the
    configuration, never chosen by a test result."""
    return 1.0 if 1.0 in fractions else (max(fractions) if fractions else None)


def full_label_results(store: Store = None, metric: str = stats.SLICE_METRIC) -> pd.DataFrame:
    """Per task, its latest experiment's arms at :func:`headline_fraction` (leakage-prone runs left out)."""
    results = finetune_results(store)
    frames = []
    for task in sorted(results["task"].unique()):
        ids = task_experiments(results, task)
        if not ids:
            continue
        summary = experiment_statistics(store, ids[0])
        fraction = headline_fraction(summary.fractions)
        rows = summary.curves[(summary.curves["metric"] == metric) & (summary.curves["fraction"] == fraction)]
        frames.append(rows.assign(task=task))
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame(columns=FULL_LABEL_COLUMNS)
    return _arm_sorted(pd.concat(frames, ignore_index=True)[FULL_LABEL_COLUMNS])


def experiments_frame(store: Store = None, limit: int = 20) -> pd.DataFrame:
    """The latest experiment runs with their children's count and status."""
    columns = ["id", "task", "status", "created_at", "children", "finished_children", "error"]
    engine = _ready(store)
    if engine is None:
        return pd.DataFrame(columns=columns)
    status = effective_status().label("status")
    stmt = select(Run.id, Run.task, status, Run.created_at, Run.error).where(Run.kind == "experiment").order_by(
        Run.id.desc()).limit(limit)
    child = Run.__table__.alias("child")
    counts = select(child.c.parent_run_id, func.count(), func.sum(case((child.c.status == "finished", 1), else_=0))).where(
        child.c.kind == "finetune").group_by(child.c.parent_run_id)
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
        if not rows:
            return pd.DataFrame(columns=columns)
        ids = [int(r[0]) for r in rows]
        kids = {int(p): (int(n), int(f or 0)) for p, n, f in conn.execute(counts.where(child.c.parent_run_id.in_(ids)))}
    frame = pd.DataFrame(_tuples(rows), columns=["id", "task", "status", "created_at", "error"])
    frame["children"] = frame["id"].map(lambda i: kids.get(int(i), (0, 0))[0])
    frame["finished_children"] = frame["id"].map(lambda i: kids.get(int(i), (0, 0))[1])
    frame["created_at"] = _utc(frame["created_at"])
    return frame[columns]


def run_results(store: Store, run_id: int) -> dict[str, Any]:
    """``name -> payload`` of a run's named results (an experiment's ``summary``, ``paired``)."""
    engine = _ready(store)
    if engine is None or not _has_table(engine, Result.__tablename__):
        return {}
    with engine.connect() as conn:
        return dict(conn.execute(select(Result.name, Result.payload).where(Result.run_id == int(run_id))).all())


def _has_table(engine: Engine, name: str) -> bool:
    try:
        with engine.connect() as conn:
            return inspect(conn).has_table(name)
    except SQLAlchemyError:
        return False


# -- scans, Grad-CAM and embeddings ----------------------------------------------------------------
SCAN_RUN_COLUMNS = ["id", "task", "arm", "fraction", "seed", "model", "checkpoint_path", "out_dir"]
CAM_COLUMNS = [
    "gradcam_run_id", "method", "split", "scan", "subject", "true_label", "target_label", "pred_label", "confidence",
    "intensity", "area_pct", "threshold", "in_brain", "raw_max", "raw_mean", "deletion_drop", "random_drop", "road",
    "pointing_hit", "lesion_energy", "heatmap_path", "out_dir",
]
EMBEDDING_COLUMNS = ["scan", "subject", "label", "split", "source", "x", "y"]


def runs_with_predictions(store: Store = None) -> pd.DataFrame:
    """Finished finetune runs that stored per-scan predictions (the Scan Explorer's models), newest first."""
    engine = _ready(store)
    if engine is None:
        return pd.DataFrame(columns=SCAN_RUN_COLUMNS)
    # EXISTS is one index probe per run; counting would read every prediction row (1M rows: seconds).
    has_predictions = select(Prediction.id).where(Prediction.run_id == Run.id).exists()
    stmt = select(Run.id, Run.task, Run.config, Run.checkpoint_path, Run.out_dir).where(
        Run.kind == "finetune", has_predictions).order_by(Run.id.desc())
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    if not rows:
        return pd.DataFrame(columns=SCAN_RUN_COLUMNS)
    frame = pd.DataFrame(_tuples(rows), columns=["id", "task", "config", "checkpoint_path", "out_dir"])
    params = _params_wide(engine, ("arm", "fraction", "seed"), frame["id"].tolist())
    frame = frame.join(params, on="id")
    configs = frame["config"].map(lambda c: c or {})
    frame["arm"] = frame["arm"].where(frame["arm"].notna(), [derive_arm(c.get("init"), c.get("mode")) for c in configs])
    frame["fraction"] = pd.to_numeric(frame["fraction"], errors="coerce").fillna(
        pd.to_numeric(configs.map(lambda c: c.get("label_fraction")), errors="coerce"))
    frame["seed"] = pd.to_numeric(frame["seed"], errors="coerce").fillna(
        pd.to_numeric(configs.map(lambda c: c.get("seed")), errors="coerce")).astype("Int64")
    frame["model"] = configs.map(lambda c: c.get("model"))
    frame["task"] = frame["task"].fillna("?")
    return frame[SCAN_RUN_COLUMNS].reset_index(drop=True)


def run_data_roots(store: Store, run_id: int) -> list[str]:
    """Folders a run's scans may be read from: its ``data_root`` param and its config's ``data``."""
    detail = run_detail(store, run_id)
    if detail is None:
        return []
    roots = [detail.params.get("data_root") or "", *(detail.params.get("data_roots") or "").split(",")]
    data = detail.run.config.get("data")
    roots += [data] if isinstance(data, str) else list(data or [])
    return [r for r in dict.fromkeys(roots) if r]


def cam_stats_frame(store: Store, model_run_id: int, scan: str | None = None) -> pd.DataFrame:
    """Stored Grad-CAM statistics of a model's scans (from its ``gradcam`` runs), with each run's out_dir."""
    engine = _ready(store)
    if engine is None or not _has_table(engine, CamStat.__tablename__):
        return pd.DataFrame(columns=CAM_COLUMNS)
    cols = [getattr(CamStat, c) for c in CAM_COLUMNS if c not in ("gradcam_run_id", "out_dir")]
    stmt = select(CamStat.run_id, *cols, Run.out_dir).join(Run, Run.id == CamStat.run_id).where(
        CamStat.model_run_id == int(model_run_id))
    if scan is not None:
        stmt = stmt.where(CamStat.scan == scan)
    with engine.connect() as conn:
        rows = conn.execute(stmt.order_by(CamStat.id)).all()
    return pd.DataFrame(_tuples(rows), columns=CAM_COLUMNS)


def embedding_runs(store: Store = None) -> pd.DataFrame:
    """Runs with a stored embedding: run id, kind, task, method, number of points."""
    columns = ["run_id", "kind", "task", "method", "n"]
    engine = _ready(store)
    if engine is None or not _has_table(engine, Embedding.__tablename__):
        return pd.DataFrame(columns=columns)
    stmt = select(Embedding.run_id, Run.kind, Run.task, Embedding.method, func.count()).join(
        Run, Run.id == Embedding.run_id).group_by(Embedding.run_id, Run.kind, Run.task, Embedding.method).order_by(
        Embedding.run_id.desc(), Embedding.method)
    with engine.connect() as conn:
        return pd.DataFrame(_tuples(conn.execute(stmt).all()), columns=columns)


def embeddings_frame(store: Store, run_id: int, method: str) -> pd.DataFrame:
    """A run's stored 2-D map for ``method``: scan, subject, label, split, source, x, y."""
    engine = _ready(store)
    if engine is None or not _has_table(engine, Embedding.__tablename__):
        return pd.DataFrame(columns=EMBEDDING_COLUMNS)
    stmt = select(*(getattr(Embedding, c) for c in EMBEDDING_COLUMNS)).where(
        Embedding.run_id == int(run_id), Embedding.method == method).order_by(Embedding.id)
    with engine.connect() as conn:
        return pd.DataFrame(_tuples(conn.execute(stmt).all()), columns=EMBEDDING_COLUMNS)


# -- data sets and audits --------------------------------------------------------------------------
DATASET_COLUMNS = ["id", "root", "created_at", "n_files", "n_usable", "n_images", "n_classes", "split_level",
                   "subject_pattern", "audit_id", "audited_at"]
AUDIT_FLAG_KEYS = {
    "cross_class_duplicates": "duplicate groups across classes",
    "cross_split_duplicates": "duplicate groups across splits",
    "cross_class_near_duplicates": "near-duplicate groups across classes",
    "cross_split_near_duplicates": "near-duplicate groups across splits",
    "subject_leaks": "subjects in more than one split",
}


def datasets_frame(store: Store = None) -> pd.DataFrame:
    """Every stored data set (newest first) with the id and time of its latest audit."""
    engine = _ready(store)
    if engine is None or not _has_table(engine, Dataset.__tablename__):
        return pd.DataFrame(columns=DATASET_COLUMNS)
    latest = select(Audit.dataset_id, func.max(Audit.id).label("audit_id")).group_by(Audit.dataset_id).subquery()
    stmt = select(Dataset.id, Dataset.root, Dataset.created_at, Dataset.n_files, Dataset.n_usable, Dataset.n_images,
                  Dataset.classes, Dataset.split_level, Dataset.subject_pattern, latest.c.audit_id, Audit.created_at
                  ).outerjoin(latest, latest.c.dataset_id == Dataset.id).outerjoin(
        Audit, Audit.id == latest.c.audit_id).order_by(Dataset.id.desc())
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    frame = pd.DataFrame(_tuples(rows), columns=["id", "root", "created_at", "n_files", "n_usable", "n_images", "classes",
                                        "split_level", "subject_pattern", "audit_id", "audited_at"])
    frame["n_classes"] = frame["classes"].map(lambda c: len(c or {}))
    frame["audit_id"] = frame["audit_id"].astype("Int64")
    for column in ("created_at", "audited_at"):
        frame[column] = _utc(frame[column])
    return frame[DATASET_COLUMNS]


@dataclass(frozen=True)
class DatasetDetail:
    """A data set's manifest summary and its latest audit (``audit`` None when never audited)."""

    id: int
    root: str
    classes: dict[str, int]
    split_level: str
    summary: dict[str, Any]
    audit: dict[str, Any] | None
    audit_details: dict[str, Any] | None


def dataset_detail(store: Store, dataset_id: int) -> DatasetDetail | None:
    engine = _ready(store)
    if engine is None or not _has_table(engine, Dataset.__tablename__):
        return None
    with engine.connect() as conn:
        row = conn.execute(select(Dataset).where(Dataset.id == int(dataset_id))).mappings().first()
        if row is None:
            return None
        audit = conn.execute(select(Audit.summary, Audit.details).where(Audit.dataset_id == int(dataset_id)).order_by(
            Audit.id.desc()).limit(1)).first()
    return DatasetDetail(int(row["id"]), str(row["root"]), dict(row["classes"] or {}), str(row["split_level"]),
                         dict(row["summary"] or {}), dict(audit[0]) if audit else None,
                         dict(audit[1]) if audit else None)


def unusable_files(store: Store, dataset_id: int, limit: int = 1000) -> pd.DataFrame:
    """Files of a data set that could not be used, with the reason (at most ``limit``)."""
    columns = ["path", "label", "reason"]
    engine = _ready(store)
    if engine is None or not _has_table(engine, ManifestEntry.__tablename__):
        return pd.DataFrame(columns=columns)
    stmt = select(ManifestEntry.path, ManifestEntry.label, ManifestEntry.reason).where(
        ManifestEntry.dataset_id == int(dataset_id), ManifestEntry.status != "ok").order_by(ManifestEntry.path).limit(limit)
    with engine.connect() as conn:
        return pd.DataFrame(_tuples(conn.execute(stmt).all()), columns=columns)


def manifest_paths(store: Store, dataset_id: int, keys: Sequence[str]) -> dict[str, str]:
    """``key -> path`` for some manifest rows of a data set (to show duplicate thumbnails)."""
    engine = _ready(store)
    if engine is None or not keys:
        return {}
    stmt = select(ManifestEntry.key, ManifestEntry.path).where(
        ManifestEntry.dataset_id == int(dataset_id), ManifestEntry.key.in_(list(keys)))
    with engine.connect() as conn:
        return dict(conn.execute(stmt).all())


def audit_warnings(store: Store = None) -> list[str]:
    """One sentence per data set whose latest audit found something that can inflate results."""
    out = []
    for _, row in datasets_frame(store).iterrows():
        if pd.isna(row["audit_id"]):
            continue
        detail = dataset_detail(store, int(row["id"]))
        audit = (detail.audit if detail else None) or {}
        found = [f"{AUDIT_FLAG_KEYS[k]}: {audit[k]}" for k in AUDIT_FLAG_KEYS if audit.get(k)]
        confound = audit.get("confound") or {}
        if confound.get("flag"):
            found.append("an acquisition confound (metadata predicts the class)")
        if found:
            out.append(f"data set #{row['id']} ({row['root']}): " + ", ".join(found))
    return out


def runs_with_confusion(store: Store = None) -> list[int]:
    """Ids of runs that stored at least one confusion matrix, newest first."""
    engine = _ready(store)
    if engine is None:
        return []
    with engine.connect() as conn:
        return [int(r) for r in conn.execute(select(Confusion.run_id).distinct().order_by(Confusion.run_id.desc())).scalars()]


# -- the leakage demonstration (``cli.py leakage``) -------------------------------------------------
LEAKAGE_UNITS = ("subject", "image")  # split by
LEAKAGE_LABELS = ("true", "shuffled")  # labels, or labels shuffled per subject
LEAKAGE_COLUMNS = ["split", "labels", "balanced_accuracy", "run_id"]


@dataclass(frozen=True)
class LeakageDemo:
    """A finished ``leakage`` run: test balanced accuracy ``cells[split][labels]`` and the chance level."""

    run_id: int
    created_at: Any
    cells: dict[str, dict[str, float | None]]
    chance: float | None
    children: dict[str, dict[str, int]]
    config: dict[str, Any]

    def frame(self) -> pd.DataFrame:
        """One row per cell (2x2 -> 4 rows): split, labels, balanced accuracy (None when missing), child run."""
        rows = [(unit, labels, self.cells.get(unit, {}).get(labels), self.children.get(unit, {}).get(labels))
                for unit in LEAKAGE_UNITS for labels in LEAKAGE_LABELS]
        return pd.DataFrame(rows, columns=LEAKAGE_COLUMNS)


def _leakage_demo(run_id: int, created_at: Any, config: dict[str, Any] | None, payload: dict[str, Any]) -> LeakageDemo:
    def number(value: Any) -> float | None:
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None

    cells = {u: {lab: number((payload.get(u) or {}).get(lab)) for lab in LEAKAGE_LABELS} for u in LEAKAGE_UNITS}
    return LeakageDemo(int(run_id), created_at, cells, number(payload.get("chance")),
                       dict(payload.get("children") or {}), dict(config or {}))


def latest_leakage(store: Store, dataset_id: int | None = None, root: str | None = None) -> LeakageDemo | None:
    """The newest finished ``leakage`` run of a data set (matched by its stored ``dataset`` id, else its
    data folder ``root``); None when there is none."""
    engine = _ready(store)
    if engine is None or not _has_table(engine, Result.__tablename__):
        return None
    runs = select(Run.id, Run.created_at, Run.config).where(Run.kind == "leakage", Run.status == "finished")
    with engine.connect() as conn:
        rows = conn.execute(runs.order_by(Run.id.desc())).all()
    if not rows:
        return None
    params = _params_wide(engine, ("dataset", "data_root"), [r[0] for r in rows])
    for run_id, created_at, config in rows:
        found = params.loc[run_id] if run_id in params.index else {"dataset": None, "data_root": None}
        same = (dataset_id is not None and found["dataset"] == str(int(dataset_id))) or (
            root is not None and found["data_root"] == root)
        if not same:
            continue
        with engine.connect() as conn:
            payload = conn.execute(select(Result.payload).where(Result.run_id == run_id,
                                                                Result.name == "leakage")).scalar()
        if isinstance(payload, dict):
            return _leakage_demo(run_id, created_at, config, payload)
    return None
