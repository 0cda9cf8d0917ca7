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

from sslmri_core.store import (
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
    """Image-level split (no subject ids), or test images the SSL encoder pretrained on."""
    overlap = pd.to_numeric(params["ssl_pool_test_overlap"], errors="coerce").fillna(0)
    return (params["split_level"] == "image") | (overlap > 0)


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
ARM_ORDER = ("ssl-linear", "ssl-full", "scratch", "imagenet")
REFERENCE_ARM = "scratch"
RESULT_COLUMNS = [
    "run_id", "task", "arm", "fraction", "seed", "experiment_id", "status", "leakage_prone", "created_at",
    *RESULT_METRICS["slice"], *RESULT_METRICS["subject"],
]
CURVE_COLUMNS = ["task", "arm", "fraction", "metric", "mean", "lo", "hi", "n", "sd"]
PAIRED_COLUMNS = ["task", "arm", "fraction", "metric", "mean_diff", "lo", "hi", "n", "wins"]


def derive_arm(init: Any, mode: Any) -> str:
    """``ssl-linear`` / ``ssl-full`` / ``scratch`` / ``imagenet`` from a finetune config."""
    init = None if pd.isna(init) else str(init)
    mode = None if pd.isna(mode) else str(mode)
    if init == "ssl":
        return f"ssl-{mode or 'full'}"
    return init or "?"


def finetune_results(store: Store = None, task: str | None = None) -> pd.DataFrame:
    """Finished finetune runs, one row each: task, arm, label fraction, seed, parent experiment, test metrics.

    ``arm``/``fraction``/``seed`` come from the run's params when an experiment wrote them, else
    from its config (``init``+``mode``, ``label_fraction``, ``seed``). Metrics are the runs' last
    values (slice and subject level; a run without subject metrics has NaN there).
    """
    engine = _ready(store)
    if engine is None:
        return pd.DataFrame(columns=RESULT_COLUMNS)
    stmt = select(Run.id, Run.task, Run.status, Run.parent_run_id, Run.config, Run.created_at).where(
        Run.kind == "finetune", Run.status == "finished"
    )
    if task:
        stmt = stmt.where(Run.task == task)
    with engine.connect() as conn:
        rows = conn.execute(stmt.order_by(Run.id)).all()
        parents = {int(i) for i, k in conn.execute(select(Run.id, Run.kind).where(Run.kind == "experiment"))}
    if not rows:
        return pd.DataFrame(columns=RESULT_COLUMNS)
    frame = pd.DataFrame(_tuples(rows), columns=["run_id", "task", "status", "parent_run_id", "config", "created_at"])
    ids = frame["run_id"].tolist()
    params = _params_wide(engine, ("arm", "fraction", "seed", *LEAK_PARAMS), ids)
    frame = frame.join(params, on="run_id")
    configs = frame["config"].map(lambda c: c or {})
    derived = [derive_arm(c.get("init"), c.get("mode")) for c in configs]
    frame["arm"] = frame["arm"].where(frame["arm"].notna(), pd.Series(derived, index=frame.index))
    frame["fraction"] = pd.to_numeric(frame["fraction"], errors="coerce").fillna(
        pd.to_numeric(configs.map(lambda c: c.get("label_fraction")), errors="coerce"))
    frame["seed"] = pd.to_numeric(frame["seed"], errors="coerce").fillna(
        pd.to_numeric(configs.map(lambda c: c.get("seed")), errors="coerce")).astype("Int64")
    frame["experiment_id"] = frame["parent_run_id"].map(
        lambda p: int(p) if not pd.isna(p) and int(p) in parents else pd.NA).astype("Int64")
    frame["task"] = frame["task"].fillna("?")
    frame["leakage_prone"] = _leakage_prone(frame)
    frame["created_at"] = _utc(frame["created_at"])
    keys = [*RESULT_METRICS["slice"], *RESULT_METRICS["subject"]]
    frame = frame.join(_last_metrics(engine, keys, ids), on="run_id")
    return frame[RESULT_COLUMNS].reset_index(drop=True)


def _t_half_width(sd: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Half width of the 95% Student-t interval of a mean; 0 where n < 2 (a single value has none)."""
    from scipy.stats import t

    n = np.asarray(n, dtype="float64")
    dof = np.maximum(n - 1, 1)
    half = t.ppf(0.975, dof) * np.nan_to_num(np.asarray(sd, dtype="float64")) / np.sqrt(np.maximum(n, 1))
    return np.where(n >= 2, half, 0.0)


def _mean_interval(frame: pd.DataFrame, keys: list[str], value: str) -> pd.DataFrame:
    """Per group of ``keys``: mean, 95% t-interval (lo, hi), n and SD of ``value`` (NaN values left out)."""
    stats = frame.dropna(subset=[value]).groupby(keys, sort=True)[value].agg(["mean", "std", "count"]).reset_index()
    half = _t_half_width(stats["std"].to_numpy(), stats["count"].to_numpy())
    return stats.assign(lo=stats["mean"] - half, hi=stats["mean"] + half, n=stats["count"].astype("int64"),
                        sd=stats["std"].fillna(0.0))


def label_efficiency(results: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per task x arm x label fraction: mean of ``metric`` over seeds with its 95% t-interval and n."""
    if results.empty or metric not in results or results[metric].isna().all():
        return pd.DataFrame(columns=CURVE_COLUMNS)
    frame = results[["task", "arm", "fraction", metric]].astype({metric: "float64"})
    stats = _mean_interval(frame, ["task", "arm", "fraction"], metric).assign(metric=metric)
    return _arm_sorted(stats[CURVE_COLUMNS])


def _arm_sorted(frame: pd.DataFrame) -> pd.DataFrame:
    rank = {a: i for i, a in enumerate(ARM_ORDER)}
    order = frame["arm"].map(lambda a: rank.get(a, len(rank)))
    return frame.assign(_o=order).sort_values(["task", "_o", "arm", "fraction"]).drop(columns="_o").reset_index(drop=True)


def paired_differences(results: pd.DataFrame, metric: str, reference: str = REFERENCE_ARM) -> pd.DataFrame:
    """Each arm minus ``reference`` on the same task, label fraction, seed and experiment: mean and 95% interval.

    Pairing removes what the arms share (the split, the label draw of that seed), so the interval
    of the difference is much tighter than the two curves' intervals suggest. ``wins`` counts pairs
    where the arm beat the reference.
    """
    if results.empty or metric not in results:
        return pd.DataFrame(columns=PAIRED_COLUMNS)
    keys = ["task", "fraction", "seed", "experiment_id"]
    frame = results.assign(experiment_id=results["experiment_id"].astype("float64").fillna(-1),
                           seed=results["seed"].astype("float64"))
    # The latest run per (arm, pairing key) when a configuration was run twice.
    frame = frame.sort_values("run_id").drop_duplicates([*keys, "arm"], keep="last")
    ref = frame[frame["arm"] == reference][[*keys, metric]].rename(columns={metric: "_ref"})
    pairs = frame[frame["arm"] != reference].merge(ref, on=keys, how="inner")
    pairs = pairs.assign(diff=(pairs[metric] - pairs["_ref"]).astype("float64")).dropna(subset=["diff"])
    if pairs.empty:
        return pd.DataFrame(columns=PAIRED_COLUMNS)
    stats = _mean_interval(pairs, ["task", "arm", "fraction"], "diff")
    wins = pairs.assign(win=pairs["diff"] > 0).groupby(["task", "arm", "fraction"], sort=True)["win"].sum().to_numpy()
    stats = stats.assign(metric=metric, mean_diff=stats["mean"], wins=wins.astype("int64"))
    return _arm_sorted(stats[PAIRED_COLUMNS])


def latest_results(results: pd.DataFrame) -> pd.DataFrame:
    """Per task, arm and label fraction, the latest run of :func:`finetune_results` (by run id)."""
    if results.empty:
        return results
    latest = results.sort_values("run_id", ascending=False).drop_duplicates(["task", "arm", "fraction"])
    return _arm_sorted(latest.assign(_f=-latest["fraction"]).sort_values(["task", "_f"]).drop(columns="_f"))


def best_per_arm(results: pd.DataFrame, metric: str = "test_balanced_accuracy") -> pd.DataFrame:
    """Per task and arm, the label fraction with the highest mean ``metric`` (its interval and n)."""
    curves = label_efficiency(results, metric)
    if curves.empty:
        return curves
    best = curves.sort_values("mean", ascending=False, kind="stable").drop_duplicates(["task", "arm"])
    return _arm_sorted(best)


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
