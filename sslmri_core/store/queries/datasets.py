"""Data-set queries: stored manifests, their audits, unusable files, and the leakage demonstration."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
from sqlalchemy import func, select

from sslmri_core.store.queries.common import (
    Store,
    has_table,
    params_wide,
    ready_engine,
    to_utc,
    tuples,
)
from sslmri_core.store.schema import Audit, Dataset, ManifestEntry, Result, Run

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
    engine = ready_engine(store)
    if engine is None or not has_table(engine, Dataset.__tablename__):
        return pd.DataFrame(columns=DATASET_COLUMNS)
    latest = select(Audit.dataset_id, func.max(Audit.id).label("audit_id")).group_by(Audit.dataset_id).subquery()
    stmt = select(Dataset.id, Dataset.root, Dataset.created_at, Dataset.n_files, Dataset.n_usable, Dataset.n_images,
                  Dataset.classes, Dataset.split_level, Dataset.subject_pattern, latest.c.audit_id, Audit.created_at
                  ).outerjoin(latest, latest.c.dataset_id == Dataset.id).outerjoin(
        Audit, Audit.id == latest.c.audit_id).order_by(Dataset.id.desc())
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    frame = pd.DataFrame(tuples(rows), columns=["id", "root", "created_at", "n_files", "n_usable", "n_images",
                                                "classes", "split_level", "subject_pattern", "audit_id", "audited_at"])
    frame["n_classes"] = frame["classes"].map(lambda c: len(c or {}))
    frame["audit_id"] = frame["audit_id"].astype("Int64")
    for column in ("created_at", "audited_at"):
        frame[column] = to_utc(frame[column])
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
    engine = ready_engine(store)
    if engine is None or not has_table(engine, Dataset.__tablename__):
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
    engine = ready_engine(store)
    if engine is None or not has_table(engine, ManifestEntry.__tablename__):
        return pd.DataFrame(columns=columns)
    stmt = select(ManifestEntry.path, ManifestEntry.label, ManifestEntry.reason).where(
        ManifestEntry.dataset_id == int(dataset_id), ManifestEntry.status != "ok"
    ).order_by(ManifestEntry.path).limit(limit)
    with engine.connect() as conn:
        return pd.DataFrame(tuples(conn.execute(stmt).all()), columns=columns)


def manifest_paths(store: Store, dataset_id: int, keys: Sequence[str]) -> dict[str, str]:
    """``key -> path`` for some manifest rows of a data set (to show duplicate thumbnails)."""
    engine = ready_engine(store)
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
    engine = ready_engine(store)
    if engine is None or not has_table(engine, Result.__tablename__):
        return None
    runs = select(Run.id, Run.created_at, Run.config).where(Run.kind == "leakage", Run.status == "finished")
    with engine.connect() as conn:
        rows = conn.execute(runs.order_by(Run.id.desc())).all()
    if not rows:
        return None
    params = params_wide(engine, ("dataset", "data_root"), [r[0] for r in rows])
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
