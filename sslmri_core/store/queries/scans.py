"""Per-scan queries: predictions, Grad-CAM statistics and 2-D embeddings (the Scan Explorer's data)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from sqlalchemy import func, select

from sslmri_core.store.queries.common import (
    Store,
    derive_arm,
    has_table,
    params_wide,
    ready_engine,
    tuples,
)
from sslmri_core.store.queries.runs import run_detail
from sslmri_core.store.schema import CamStat, Embedding, ManifestEntry, Prediction, Run

PREDICTION_COLUMNS = ["split", "scan", "subject", "true_label", "pred_label", "confidence", "probs"]
SCAN_RUN_COLUMNS = ["id", "task", "arm", "fraction", "seed", "model", "checkpoint_path", "out_dir"]
CAM_COLUMNS = [
    "gradcam_run_id", "method", "split", "scan", "subject", "true_label", "target_label", "pred_label", "confidence",
    "intensity", "area_pct", "threshold", "in_brain", "raw_max", "raw_mean", "deletion_drop", "random_drop", "road",
    "pointing_hit", "lesion_energy", "baseline_drop", "pointing_chance",
    "head_area", "lesion_area", "heatmap_path", "out_dir",
]
EMBEDDING_COLUMNS = ["scan", "subject", "label", "split", "source", "x", "y"]


def predictions_frame(store: Store, run_id: int, split: str | None = None) -> pd.DataFrame:
    """Per-scan predictions of a run (optionally one split), least confident first."""
    engine = ready_engine(store)
    if engine is None:
        return pd.DataFrame(columns=[*PREDICTION_COLUMNS, "correct"])
    stmt = select(*(getattr(Prediction, c) for c in PREDICTION_COLUMNS)).where(Prediction.run_id == int(run_id))
    if split:
        stmt = stmt.where(Prediction.split == split)
    with engine.connect() as conn:
        rows = conn.execute(stmt.order_by(Prediction.id)).all()
    frame = pd.DataFrame(tuples(rows), columns=PREDICTION_COLUMNS)
    frame["correct"] = frame["true_label"] == frame["pred_label"]
    return frame.sort_values("confidence", kind="stable").reset_index(drop=True)


def slice_positions(store: Store, run_id: int, scans: Sequence[str] | None = None) -> dict[str, float | None]:
    """``scan -> position`` along the slice axis for a run's predicted scans: the run's predictions joined to
    the manifest rows of its data set (its ``dataset`` param) by ``key == scan``. A scan without a manifest
    row, or a row from before positions were stored, maps to None (or is missing): order those by name."""
    engine = ready_engine(store)
    if engine is None or not has_table(engine, ManifestEntry.__tablename__):
        return {}
    dataset = params_wide(engine, ("dataset",), [int(run_id)])
    raw = dataset["dataset"].iloc[0] if len(dataset) else None
    try:
        dataset_id = int(str(raw))
    except ValueError:
        return {}
    stmt = select(ManifestEntry.key, ManifestEntry.position).join(
        Prediction, (Prediction.scan == ManifestEntry.key) & (Prediction.run_id == int(run_id))).where(
        ManifestEntry.dataset_id == dataset_id).distinct()
    if scans is not None:
        stmt = stmt.where(ManifestEntry.key.in_(list(scans)))
    with engine.connect() as conn:
        return {str(key): None if position is None else float(position) for key, position in conn.execute(stmt)}


def runs_with_predictions(store: Store = None) -> pd.DataFrame:
    """Finished finetune runs that stored per-scan predictions (the Scan Explorer's models), newest first."""
    engine = ready_engine(store)
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
    frame = pd.DataFrame(tuples(rows), columns=["id", "task", "config", "checkpoint_path", "out_dir"])
    params = params_wide(engine, ("arm", "fraction", "seed"), frame["id"].tolist())
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
    engine = ready_engine(store)
    if engine is None or not has_table(engine, CamStat.__tablename__):
        return pd.DataFrame(columns=CAM_COLUMNS)
    cols = [getattr(CamStat, c) for c in CAM_COLUMNS if c not in ("gradcam_run_id", "out_dir")]
    stmt = select(CamStat.run_id, *cols, Run.out_dir).join(Run, Run.id == CamStat.run_id).where(
        CamStat.model_run_id == int(model_run_id))
    if scan is not None:
        stmt = stmt.where(CamStat.scan == scan)
    with engine.connect() as conn:
        rows = conn.execute(stmt.order_by(CamStat.id)).all()
    return pd.DataFrame(tuples(rows), columns=CAM_COLUMNS)


def embedding_runs(store: Store = None) -> pd.DataFrame:
    """Runs with a stored embedding: run id, kind, task, method, number of points."""
    columns = ["run_id", "kind", "task", "method", "n"]
    engine = ready_engine(store)
    if engine is None or not has_table(engine, Embedding.__tablename__):
        return pd.DataFrame(columns=columns)
    stmt = select(Embedding.run_id, Run.kind, Run.task, Embedding.method, func.count()).join(
        Run, Run.id == Embedding.run_id).group_by(Embedding.run_id, Run.kind, Run.task, Embedding.method).order_by(
        Embedding.run_id.desc(), Embedding.method)
    with engine.connect() as conn:
        return pd.DataFrame(tuples(conn.execute(stmt).all()), columns=columns)


def embeddings_frame(store: Store, run_id: int, method: str) -> pd.DataFrame:
    """A run's stored 2-D map for ``method``: scan, subject, label, split, source, x, y."""
    engine = ready_engine(store)
    if engine is None or not has_table(engine, Embedding.__tablename__):
        return pd.DataFrame(columns=EMBEDDING_COLUMNS)
    stmt = select(*(getattr(Embedding, c) for c in EMBEDDING_COLUMNS)).where(
        Embedding.run_id == int(run_id), Embedding.method == method).order_by(Embedding.id)
    with engine.connect() as conn:
        return pd.DataFrame(tuples(conn.execute(stmt).all()), columns=EMBEDDING_COLUMNS)
