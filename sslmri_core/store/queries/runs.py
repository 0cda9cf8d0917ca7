"""Run queries: the store's status, the runs table, one run's record, parameters, metrics and confusion matrices."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sqlalchemy import func, inspect, select

from sslmri_core.store.engine import (
    display_url,
    error_line,
    read_engine,
    resolve_db_url,
    sqlite_path,
)
from sslmri_core.store.queries.common import (
    LEAK_PARAMS,
    Store,
    derive_arm,
    last_metrics,
    leakage_prone,
    params_wide,
    ready_engine,
    restore_nan,
    to_utc,
    tuples,
)
from sslmri_core.store.schema import (
    RUN_STATUSES,
    Confusion,
    Metric,
    Param,
    Run,
    effective_status,
)
from sslmri_core.store.status import STALE_ERROR, RunRecord, record_from, stale_cutoff

# Final metrics shown next to every run; finetune runs write them with step and epoch None.
SUMMARY_METRICS = ("test_accuracy", "test_balanced_accuracy", "test_macro_f1")
# The first of these a run has gives its ``final_loss`` (epoch means are smoother than steps).
LOSS_KEYS = ("epoch_loss", "loss", "train_loss")

RUN_COLUMNS = [
    "id", "kind", "status", "task", "parent_run_id", "model", "init", "mode", "arm", "label_fraction", "seed",
    *SUMMARY_METRICS, "final_loss", "split_level", "leakage_prone", "created_at", "ended_at", "duration_s",
    "device", "host", "error",
]
SERIES_COLUMNS = ["key", "step", "epoch", "value"]


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
    except Exception as exc:  # a missing driver or an unreachable server: say so (masked), don't crash the page
        return StoreStatus(url=shown, exists=False, n_runs=0, error=error_line(exc, resolved))
    return StoreStatus(url=shown, exists=True, n_runs=int(n_runs))


def counts_by_kind_status(store: Store = None) -> pd.DataFrame:
    """One row per run kind: a column per status with its count, and ``total`` (silent runs count as interrupted)."""
    columns = ["kind", *RUN_STATUSES, "total"]
    engine = ready_engine(store)
    if engine is None:
        return pd.DataFrame(columns=columns)
    status = effective_status().label("status")
    stmt = select(Run.kind, status, func.count()).group_by(Run.kind, status)
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    if not rows:
        return pd.DataFrame(columns=columns)
    long = pd.DataFrame(tuples(rows), columns=["kind", "status", "n"])
    wide = long.pivot_table(index="kind", columns="status", values="n", aggfunc="sum", fill_value=0)
    wide = wide.reindex(columns=list(RUN_STATUSES), fill_value=0).astype("int64")
    wide["total"] = wide.sum(axis=1)
    return wide.reset_index().rename_axis(columns=None)[columns]


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
    engine = ready_engine(store)
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
    runs = pd.DataFrame(tuples(rows), columns=[*(c.name for c in table_columns), "status", "stored_status"])
    if runs.empty:
        return pd.DataFrame(columns=RUN_COLUMNS)
    stale = (runs["status"] == "interrupted") & (runs["stored_status"] == "running")
    if stale.any():
        last = to_utc(runs["heartbeat_at"].fillna(runs["started_at"]).fillna(runs["created_at"]))
        runs["error"] = runs["error"].astype(object)
        runs.loc[stale, "error"] = [STALE_ERROR.format(last=t.isoformat(timespec="seconds")) for t in last[stale]]
    runs = pd.concat([runs, _config_columns(runs["config"])], axis=1)
    # Unfiltered: read the few keys for every run (a long IN list costs more than it saves).
    ids = runs["id"].tolist() if (kind or status or task) else None
    last = last_metrics(engine, [*SUMMARY_METRICS, *LOSS_KEYS], ids)
    runs = runs.join(last, on="id")
    runs["final_loss"] = runs[list(LOSS_KEYS)].bfill(axis=1).iloc[:, 0].astype("float64")
    wide = params_wide(engine, (*LEAK_PARAMS, "arm"), ids)
    runs = runs.join(wide[list(LEAK_PARAMS)], on="id")
    runs["leakage_prone"] = leakage_prone(runs)
    runs["arm"] = runs["id"].map(wide["arm"])
    derived = pd.Series([derive_arm(i, m) for i, m in zip(runs["init"], runs["mode"], strict=True)], index=runs.index)
    runs["arm"] = runs["arm"].where(runs["arm"].notna(), derived.where(runs["kind"] == "finetune"))
    for name in ("created_at", "started_at", "ended_at"):
        runs[name] = to_utc(runs[name])
    start = runs["started_at"].fillna(runs["created_at"])
    runs["duration_s"] = (runs["ended_at"] - start).dt.total_seconds()
    runs["label_fraction"] = pd.to_numeric(runs["label_fraction"], errors="coerce")
    runs["parent_run_id"] = runs["parent_run_id"].astype("Int64")
    return runs[RUN_COLUMNS].reset_index(drop=True)


def run_detail(store: Store, run_id: int) -> RunDetail | None:
    """The run's record (with its config) and parameters; None when there is no such run."""
    engine = ready_engine(store)
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


def metric_series(store: Store, run_id: int, keys: Sequence[str] | None = None) -> pd.DataFrame:
    """Every metric point of a run in insertion order (columns key, step, epoch, value; NaN kept)."""
    engine = ready_engine(store)
    if engine is None:
        return pd.DataFrame(columns=SERIES_COLUMNS)
    stmt = select(Metric.key, Metric.step, Metric.epoch, Metric.value, Metric.is_nan).where(
        Metric.run_id == int(run_id)
    )
    if keys is not None:
        stmt = stmt.where(Metric.key.in_(list(keys)))
    with engine.connect() as conn:
        rows = conn.execute(stmt.order_by(Metric.id)).all()
    frame = pd.DataFrame(tuples(rows), columns=[*SERIES_COLUMNS, "is_nan"])
    frame["value"] = restore_nan(frame)
    for column in ("step", "epoch"):
        frame[column] = frame[column].astype("Int64")
    return frame[SERIES_COLUMNS]


def final_metrics(store: Store, run_id: int) -> dict[str, float]:
    """The last value of every metric series of a run (NaN restored)."""
    series = metric_series(store, run_id)
    if not len(series):
        return {}
    return {str(k): float(v) for k, v in series.groupby("key", sort=True)["value"].last().items()}


def final_metrics_frame(store: Store, run_id: int) -> pd.DataFrame:
    """:func:`final_metrics` as a (metric, value) frame for display."""
    return pd.DataFrame(list(final_metrics(store, run_id).items()), columns=["metric", "value"])


def confusion_views(store: Store, run_id: int) -> list[tuple[str, str]]:
    """The (split, level) pairs a run has confusion matrices for, test first."""
    engine = ready_engine(store)
    if engine is None:
        return []
    stmt = select(Confusion.split, Confusion.level).where(Confusion.run_id == int(run_id))
    with engine.connect() as conn:
        pairs = [(str(s), str(lv)) for s, lv in conn.execute(stmt)]
    order = {"test": 0, "val": 1, "train": 2}
    return sorted(pairs, key=lambda p: (order.get(p[0], 9), p[0], p[1] != "slice", p[1]))


def confusion(store: Store, run_id: int, split: str = "test", level: str = "slice") -> ConfusionMatrix | None:
    """The run's confusion matrix for ``split``/``level``; None when it has none."""
    engine = ready_engine(store)
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


def runs_with_confusion(store: Store = None) -> list[int]:
    """Ids of runs that stored at least one confusion matrix, newest first."""
    engine = ready_engine(store)
    if engine is None:
        return []
    with engine.connect() as conn:
        ids = conn.execute(select(Confusion.run_id).distinct().order_by(Confusion.run_id.desc())).scalars()
        return [int(r) for r in ids]
