"""Result queries: finetune results per arm, label fraction and seed; experiment statistics and comparisons."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import case, func, select
from sqlalchemy.engine import Engine

from sslmri_core.evaluation import stats
from sslmri_core.store.queries.common import (
    LEAK_PARAMS,
    Store,
    derive_arm,
    has_table,
    last_metrics,
    leakage_prone,
    params_wide,
    ready_engine,
    to_utc,
    tuples,
)
from sslmri_core.store.queries.runs import SUMMARY_METRICS, runs_frame
from sslmri_core.store.schema import Prediction, Result, Run, effective_status

LATEST_COLUMNS = [
    "task", "arm", "init", "mode", "label_fraction", "model", "run_id", "ended_at", *SUMMARY_METRICS,
    "leakage_prone",
]
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


def _finetune_runs(engine: Engine, where: Sequence[Any]) -> pd.DataFrame:
    """Finished finetune runs matching ``where`` with arm, fraction, seed, fold, steps and leakage (one row each).

    ``arm``/``fraction``/``seed`` come from the run's params when it wrote them, else from its config
    (``init``+``mode``, ``label_fraction``, ``seed``); ``fold`` from the config (None: no cross-validation).
    """
    stmt = select(Run.id, Run.task, Run.status, Run.parent_run_id, Run.config, Run.created_at).where(
        Run.kind == "finetune", Run.status == "finished", *where).order_by(Run.id)
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    frame = pd.DataFrame(tuples(rows), columns=["run_id", "task", "status", "parent_run_id", "config", "created_at"])
    if frame.empty:
        return frame
    frame = frame.join(params_wide(engine, RUN_PARAMS, frame["run_id"].tolist()), on="run_id")
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
    frame["leakage_prone"] = leakage_prone(frame)
    return frame


def finetune_results(store: Store = None, task: str | None = None) -> pd.DataFrame:
    """Finished finetune runs, one row each: task, arm, label fraction, seed, fold, parent experiment, steps,
    leakage, test metrics (the runs' last values; a run without subject metrics has NaN there). The leakage
    demonstration's runs are not results and are left out.

    A listing, not a summary: runs of different experiments (or none) are never averaged here.
    """
    engine = ready_engine(store)
    if engine is None:
        return pd.DataFrame(columns=RESULT_COLUMNS)
    frame = _finetune_runs(engine, [Run.task == task] if task else [])
    if frame.empty:
        return pd.DataFrame(columns=RESULT_COLUMNS)
    with engine.connect() as conn:
        kinds = dict(conn.execute(select(Run.id, Run.kind).where(Run.kind.in_(("experiment", "leakage")))).all())
    # The leakage demonstration trains leaky on purpose (image split, shuffled labels); the Data page shows it.
    frame = frame[frame["parent_run_id"].map(lambda p: pd.isna(p) or kinds.get(int(p)) != "leakage")].copy()
    parents = {int(i) for i, kind in kinds.items() if kind == "experiment"}
    frame["experiment_id"] = frame["parent_run_id"].map(
        lambda p: int(p) if not pd.isna(p) and int(p) in parents else pd.NA).astype("Int64")
    frame["created_at"] = to_utc(frame["created_at"])
    keys = [*RESULT_METRICS["slice"], *RESULT_METRICS["subject"]]
    frame = frame.join(last_metrics(engine, keys, frame["run_id"].tolist()), on="run_id")
    return frame[RESULT_COLUMNS].reset_index(drop=True)


def task_experiments(results: pd.DataFrame, task: str) -> list[int]:
    """Experiments of ``task`` with a finished child in ``results`` (:func:`finetune_results`), newest first."""
    ids = results.loc[results["task"] == task, "experiment_id"].dropna()
    return sorted({int(i) for i in ids}, reverse=True)


def experiment_predictions(store: Store, experiment_id: int, include_leaky: bool = True) -> pd.DataFrame:
    """Per-scan test predictions of an experiment's finished children (the latest run per arm, fraction,
    seed and fold): the frame :func:`sslmri_core.evaluation.stats.summarise_predictions` takes.

    Columns :data:`EXPERIMENT_FRAME_COLUMNS`; ``attrs["classes"]`` is the class order of ``probs``.
    ``include_leaky=False`` leaves out leakage-prone children.
    """
    engine = ready_engine(store)
    empty = pd.DataFrame(columns=EXPERIMENT_FRAME_COLUMNS)
    if engine is None:
        return empty
    runs = _finetune_runs(engine, [Run.parent_run_id == int(experiment_id)])
    if runs.empty:
        return empty
    runs = runs.sort_values("run_id").drop_duplicates(["arm", "fraction", "seed", "fold"], keep="last")
    runs = runs if include_leaky else runs[~runs["leakage_prone"]]
    stmt = select(Prediction.run_id, Prediction.scan, Prediction.subject, Prediction.group_key, Prediction.true_label,
                  Prediction.pred_label, Prediction.probs).where(
        Prediction.run_id.in_([int(r) for r in runs["run_id"]]), Prediction.split == "test").order_by(Prediction.id)
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    preds = pd.DataFrame(tuples(rows),
                         columns=["run_id", "scan", "subject", "group", "true_label", "pred_label", "probs"])
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
    """One experiment's curves and paired differences (:mod:`sslmri_core.evaluation.stats`), never mixed with others."""

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
    engine = ready_engine(store)
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
    engine = ready_engine(store)
    if engine is None:
        return pd.DataFrame(columns=columns)
    status = effective_status().label("status")
    stmt = select(Run.id, Run.task, status, Run.created_at, Run.error).where(Run.kind == "experiment").order_by(
        Run.id.desc()).limit(limit)
    child = Run.__table__.alias("child")
    finished = func.sum(case((child.c.status == "finished", 1), else_=0))
    counts = select(child.c.parent_run_id, func.count(), finished).where(
        child.c.kind == "finetune").group_by(child.c.parent_run_id)
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
        if not rows:
            return pd.DataFrame(columns=columns)
        ids = [int(r[0]) for r in rows]
        kids = {int(p): (int(n), int(f or 0)) for p, n, f in conn.execute(counts.where(child.c.parent_run_id.in_(ids)))}
    frame = pd.DataFrame(tuples(rows), columns=["id", "task", "status", "created_at", "error"])
    frame["children"] = frame["id"].map(lambda i: kids.get(int(i), (0, 0))[0])
    frame["finished_children"] = frame["id"].map(lambda i: kids.get(int(i), (0, 0))[1])
    frame["created_at"] = to_utc(frame["created_at"])
    return frame[columns]


def run_results(store: Store, run_id: int) -> dict[str, Any]:
    """``name -> payload`` of a run's named results (an experiment's ``summary``, ``paired``)."""
    engine = ready_engine(store)
    if engine is None or not has_table(engine, Result.__tablename__):
        return {}
    with engine.connect() as conn:
        return dict(conn.execute(select(Result.name, Result.payload).where(Result.run_id == int(run_id))).all())
