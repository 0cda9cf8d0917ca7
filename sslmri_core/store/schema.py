"""The run store's schema: the SQLAlchemy ORM tables and the SQL expressions over them.

The schema itself is owned by the Alembic migrations in ``store/migrations``; these classes must
match the newest revision. ORM objects never leave ``sslmri_core.store``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    and_,
    case,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.elements import ColumnElement

from sslmri_core.store.status import stale_cutoff

RUN_KINDS = ("pretrain", "finetune", "evaluate", "gradcam", "experiment", "leakage")
RUN_STATUSES = ("running", "finished", "failed", "interrupted")


class Base(DeclarativeBase):
    pass


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (
        CheckConstraint(f"kind IN {RUN_KINDS!r}", name="ck_runs_kind"),
        CheckConstraint(f"status IN {RUN_STATUSES!r}", name="ck_runs_status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    parent_run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), index=True)
    task: Mapped[str | None] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    git_sha: Mapped[str | None] = mapped_column(String(40))
    host: Mapped[str | None] = mapped_column(String(255))
    pid: Mapped[int | None] = mapped_column(Integer)  # the owning process on ``host`` (rank 0 under torchrun)
    device: Mapped[str | None] = mapped_column(String(255))
    out_dir: Mapped[str | None] = mapped_column(Text)
    checkpoint_path: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


def last_alive() -> ColumnElement[Any]:
    """A run's last sign of life: its heartbeat, else its start."""
    return func.coalesce(Run.heartbeat_at, Run.started_at, Run.created_at)


def effective_status(cutoff: datetime | None = None) -> ColumnElement[Any]:
    """SQL for the status readers show: ``running`` with no heartbeat since ``cutoff`` is ``interrupted``.

    The heartbeat rule only: SQL cannot ask whether ``runs.pid`` is alive, so a run killed on this
    host shows ``running`` here (the dashboard's tables and counts) until its heartbeat goes stale,
    or until a command stores it (:meth:`RunStore.mark_stale_interrupted`). Python readers
    (:func:`sslmri_core.store.status.record_from`) see it ``interrupted`` at once.
    """
    cutoff = cutoff or stale_cutoff()
    return case((and_(Run.status == "running", last_alive() < cutoff), "interrupted"), else_=Run.status)


class Param(Base):
    __tablename__ = "params"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    value: Mapped[str | None] = mapped_column(Text)


class Metric(Base):
    """One point of a metric series. NaN is kept as ``value NULL, is_nan true`` (SQLite has no NaN)."""

    __tablename__ = "metrics"
    __table_args__ = (Index("ix_metrics_run_key", "run_id", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(255))
    step: Mapped[int | None] = mapped_column(Integer)
    epoch: Mapped[int | None] = mapped_column(Integer)
    value: Mapped[float | None] = mapped_column(Float)
    is_nan: Mapped[bool] = mapped_column(Boolean, default=False)


class Confusion(Base):
    __tablename__ = "confusion"
    __table_args__ = (
        UniqueConstraint("run_id", "split", "level", name="uq_confusion_run_split_level"),
        CheckConstraint("level IN ('slice', 'subject')", name="ck_confusion_level"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    split: Mapped[str] = mapped_column(String(16))
    level: Mapped[str] = mapped_column(String(16))
    labels: Mapped[list[str]] = mapped_column(JSON)
    matrix: Mapped[list[list[int]]] = mapped_column(JSON)  # rows = true class, cols = predicted


class Prediction(Base):
    __tablename__ = "predictions"
    __table_args__ = (Index("ix_predictions_run_split", "run_id", "split"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    split: Mapped[str] = mapped_column(String(16))
    scan: Mapped[str] = mapped_column(Text)
    subject: Mapped[str | None] = mapped_column(String(255))
    true_label: Mapped[str] = mapped_column(String(255))
    pred_label: Mapped[str] = mapped_column(String(255))
    confidence: Mapped[float] = mapped_column(Float)
    probs: Mapped[list[float]] = mapped_column(JSON)  # in the order of the run's class labels
    # The scan's split group: the bootstrap unit without subject ids.
    group_key: Mapped[str | None] = mapped_column(Text)


class Result(Base):
    """A named JSON payload of a run: metric intervals, reliability bins, an experiment's summary."""

    __tablename__ = "results"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    payload: Mapped[Any] = mapped_column(JSON)


class CamStat(Base):
    """Grad-CAM statistics of one scan under one method; ``run_id`` is the ``gradcam`` run."""

    __tablename__ = "cam_stats"
    __table_args__ = (Index("ix_cam_stats_model_scan", "model_run_id", "scan"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    model_run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    checkpoint: Mapped[str | None] = mapped_column(Text)
    method: Mapped[str] = mapped_column(String(32))
    split: Mapped[str | None] = mapped_column(String(16))
    scan: Mapped[str] = mapped_column(Text)
    subject: Mapped[str | None] = mapped_column(String(255))
    true_label: Mapped[str | None] = mapped_column(String(255))
    target_label: Mapped[str] = mapped_column(String(255))
    pred_label: Mapped[str] = mapped_column(String(255))
    confidence: Mapped[float] = mapped_column(Float)
    intensity: Mapped[float] = mapped_column(Float)
    area_pct: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    in_brain: Mapped[float | None] = mapped_column(Float)
    head_area: Mapped[float | None] = mapped_column(Float)  # share of the image in the head: in_brain's reference
    lesion_area: Mapped[float | None] = mapped_column(Float)  # share of the image in the lesion: lesion_energy's
    raw_max: Mapped[float] = mapped_column(Float)
    raw_mean: Mapped[float] = mapped_column(Float)
    deletion_drop: Mapped[float | None] = mapped_column(Float)
    random_drop: Mapped[float | None] = mapped_column(Float)  # a random region inside the head, same pixel count
    baseline_drop: Mapped[float | None] = mapped_column(Float)  # the model-free head-mask map, scored the same way
    road: Mapped[float | None] = mapped_column(Float)
    pointing_hit: Mapped[bool | None] = mapped_column(Boolean)
    pointing_chance: Mapped[float | None] = mapped_column(Float)  # hit rate of a random point inside the head
    lesion_energy: Mapped[float | None] = mapped_column(Float)
    heatmap_path: Mapped[str | None] = mapped_column(Text)  # relative to the gradcam run's out_dir


class Embedding(Base):
    """2-D coordinates of one scan's encoder features under UMAP or t-SNE."""

    __tablename__ = "embeddings"
    __table_args__ = (Index("ix_embeddings_run_method", "run_id", "method"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    method: Mapped[str] = mapped_column(String(16))
    scan: Mapped[str] = mapped_column(Text)
    subject: Mapped[str | None] = mapped_column(String(255))
    label: Mapped[str | None] = mapped_column(String(255))
    split: Mapped[str | None] = mapped_column(String(16))
    source: Mapped[str | None] = mapped_column(Text)
    x: Mapped[float] = mapped_column(Float)
    y: Mapped[float] = mapped_column(Float)


class Dataset(Base):
    """A data folder's manifest summary, keyed by its content fingerprint."""

    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    root: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    n_files: Mapped[int] = mapped_column(Integer)
    n_usable: Mapped[int] = mapped_column(Integer)
    n_images: Mapped[int] = mapped_column(Integer)
    classes: Mapped[dict[str, int]] = mapped_column(JSON)
    subject_pattern: Mapped[str | None] = mapped_column(Text)
    split_level: Mapped[str] = mapped_column(String(16))
    summary: Mapped[dict[str, Any]] = mapped_column(JSON)


class ManifestEntry(Base):
    """One manifest row (an image, a NIfTI slice, or a file that could not be used, with the reason)."""

    __tablename__ = "manifest_rows"
    __table_args__ = (Index("ix_manifest_rows_dataset", "dataset_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(Text)
    path: Mapped[str] = mapped_column(Text)
    rel_path: Mapped[str] = mapped_column(Text)
    label: Mapped[str] = mapped_column(String(255))
    folder_label: Mapped[str] = mapped_column(String(255))
    subject: Mapped[str | None] = mapped_column(String(255))
    given_split: Mapped[str | None] = mapped_column(String(16))
    content_hash: Mapped[str | None] = mapped_column(String(64))
    file_size: Mapped[int | None] = mapped_column(Integer)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    mode: Mapped[str | None] = mapped_column(String(32))
    bit_depth: Mapped[int | None] = mapped_column(Integer)
    slice_index: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    mask_path: Mapped[str | None] = mapped_column(Text)
    position: Mapped[float | None] = mapped_column(Float)  # along the slice axis (see ManifestRow.position)
    series: Mapped[str | None] = mapped_column(String(64))  # salted hash of a DICOM series, else None


class SplitAssignment(Base):
    """Which split each image of a run was in (``pool``/``excluded`` for pretraining runs)."""

    __tablename__ = "split_assignments"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(Text, primary_key=True)
    subject: Mapped[str | None] = mapped_column(String(255))
    split: Mapped[str] = mapped_column(String(16))
    labeled: Mapped[bool] = mapped_column(Boolean, default=False)
    content_hash: Mapped[str | None] = mapped_column(String(64))  # of the file's bytes: compare by content
    group_key: Mapped[str | None] = mapped_column(Text)  # the split group: subject, else duplicate component


class Audit(Base):
    """A data audit of one dataset: summary numbers and the detailed findings."""

    __tablename__ = "audits"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    summary: Mapped[dict[str, Any]] = mapped_column(JSON)
    details: Mapped[dict[str, Any]] = mapped_column(JSON)
