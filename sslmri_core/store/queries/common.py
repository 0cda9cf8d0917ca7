"""Shared read helpers of the query modules (not part of the dashboard's API).

A query opens its store with :func:`ready_engine`, which reports a store that is missing or has no
schema yet as None (the query then returns an empty result), and turns rows into frames with the
helpers here. Nothing here writes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import func, inspect, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from sslmri_core.store.engine import read_engine, resolve_db_url, sqlite_path
from sslmri_core.store.schema import Metric, Param, Run

Store = str | Engine | None  # a URL (None: SSLMRI_DB or the default) or an engine from read_engine
LEAK_PARAMS = ("split_level", "ssl_pool_test_overlap", "leakage_reasons")


def _engine(store: Store) -> Engine:
    return store if isinstance(store, Engine) else read_engine(store)


def _has_runs(engine: Engine) -> bool:
    """True when the store can be reached and has a ``runs`` table (creating nothing)."""
    try:
        with engine.connect() as conn:
            return inspect(conn).has_table(Run.__tablename__)
    except SQLAlchemyError:
        return False


def ready_engine(store: Store) -> Engine | None:
    """The engine when the store can be read, else None (missing file, no schema yet)."""
    if isinstance(store, (str, type(None))):
        path = sqlite_path(resolve_db_url(store))
        if path is not None and not path.is_file():
            return None
    engine = _engine(store)
    return engine if _has_runs(engine) else None


def has_table(engine: Engine, name: str) -> bool:
    """True when the store can be reached and has table ``name`` (creating nothing)."""
    try:
        with engine.connect() as conn:
            return inspect(conn).has_table(name)
    except SQLAlchemyError:
        return False


def to_utc(values: pd.Series) -> pd.Series:
    """Datetimes as UTC: SQLite hands back naive ones, and the store writes UTC."""
    return pd.to_datetime(values, utc=True)


def tuples(rows: Sequence[Any]) -> list[tuple[Any, ...]]:
    """Result rows as plain tuples, for ``pd.DataFrame``."""
    # pandas probes SQLAlchemy Row objects attribute by attribute (slow: 0.2 s per 20,000 rows); tuples are instant.
    return [tuple(r) for r in rows]


def restore_nan(frame: pd.DataFrame) -> pd.Series:
    """A metric frame's ``value`` column as floats, NaN where ``is_nan`` (SQLite stores no NaN)."""
    values = pd.to_numeric(frame["value"], errors="coerce").astype("float64")
    return values.where(~frame["is_nan"].astype(bool), np.nan)


def last_metrics(engine: Engine, keys: Sequence[str], run_ids: Sequence[int] | None = None) -> pd.DataFrame:
    """Last value (by insertion) of each ``keys`` series per run: a frame indexed by run id."""
    last_id = select(func.max(Metric.id)).where(Metric.key.in_(list(keys))).group_by(Metric.run_id, Metric.key)
    if run_ids is not None:
        last_id = last_id.where(Metric.run_id.in_(list(run_ids)))
    stmt = select(Metric.run_id, Metric.key, Metric.value, Metric.is_nan).where(Metric.id.in_(last_id))
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    frame = pd.DataFrame(tuples(rows), columns=["run_id", "key", "value", "is_nan"])
    frame["value"] = restore_nan(frame)
    wide = frame.pivot_table(index="run_id", columns="key", values="value", aggfunc="last", dropna=False)
    return wide.reindex(columns=list(keys))


def params_wide(engine: Engine, keys: Sequence[str], run_ids: Sequence[int] | None) -> pd.DataFrame:
    """Selected parameters per run (``run_ids`` None: every run): a frame indexed by run id, one column per key."""
    stmt = select(Param.run_id, Param.key, Param.value).where(Param.key.in_(list(keys)))
    if run_ids is not None:
        stmt = stmt.where(Param.run_id.in_([int(r) for r in run_ids]))
    with engine.connect() as conn:
        frame = pd.DataFrame(tuples(conn.execute(stmt).all()), columns=["run_id", "key", "value"])
    wide = frame.pivot(index="run_id", columns="key", values="value") if not frame.empty else pd.DataFrame()
    return wide.reindex(columns=list(keys))


def leakage_prone(params: pd.DataFrame) -> pd.Series:
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


def derive_arm(init: Any, mode: Any) -> str:
    """``ssl-linear`` / ``ssl-full`` / ``scratch`` / ``imagenet`` from a finetune config."""
    init = None if pd.isna(init) else str(init)
    mode = None if pd.isna(mode) else str(mode)
    if init == "ssl":
        return f"ssl-{mode or 'full'}"
    return init or "?"
