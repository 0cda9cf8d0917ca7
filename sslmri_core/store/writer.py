"""The run store: SQLAlchemy 2 models and the write API used by training code.

Every run, its config, parameters, metric series, confusion matrices and per-scan predictions
go here, and so do data-set manifests, each run's split assignment and data audits. The schema is owned by the Alembic migrations in ``sslmri_core/migrations``; opening a
store upgrades it to the newest revision. ORM objects never leave this module: readers get plain
dataclasses (here) or DataFrames (``sslmri_core.store.queries``).

Concurrency and crashes: every write is one transaction, retried with backoff when SQLite says
the database is locked (or PostgreSQL reports a serialization failure or deadlock). A running
training process refreshes its run's ``heartbeat_at``; a ``running`` run whose last sign of life
is older than :func:`heartbeat_timeout_s` *reads* as ``interrupted`` everywhere (the process was
killed or crashed), and writers (the CLI) may store that with :meth:`RunStore.mark_stale_interrupted`.
"""

from __future__ import annotations

import functools
import math
import os
import random
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

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
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.sql.elements import ColumnElement

from sslmri_core.data.manifest import Manifest

DEFAULT_DB_URL = "sqlite:///runs.db"
RUN_KINDS = ("pretrain", "finetune", "evaluate", "gradcam", "experiment", "leakage")
RUN_STATUSES = ("running", "finished", "failed", "interrupted")

# Heartbeats: training refreshes ``runs.heartbeat_at`` at most every interval; a ``running`` run
# silent for longer than the timeout reads as ``interrupted``. Both can be set by environment
# variable (tests use short ones); these are the only defaults.
HEARTBEAT_INTERVAL_ENV = "SSLMRI_HEARTBEAT_INTERVAL"
HEARTBEAT_TIMEOUT_ENV = "SSLMRI_HEARTBEAT_TIMEOUT"
DEFAULT_HEARTBEAT_INTERVAL_S = 15.0
DEFAULT_HEARTBEAT_TIMEOUT_S = 300.0
STALE_ERROR = "no heartbeat since {last}: the process is gone (killed or crashed)"
# Writes that find SQLite locked (or hit a PostgreSQL serialization failure) are retried.
WRITE_ATTEMPTS = 8
_RETRY_SQLSTATES = ("40001", "40P01")  # serialization_failure, deadlock_detected

F = TypeVar("F", bound=Callable[..., Any])


class StoreError(RuntimeError):
    """The run store cannot be opened or does not hold what was asked for."""


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"${name} must be a number of seconds, got {raw!r}") from None
    if not value > 0:
        raise ValueError(f"${name} must be positive, got {raw!r}")
    return value


def heartbeat_interval_s() -> float:
    """Seconds between two heartbeat writes of a training run (``$SSLMRI_HEARTBEAT_INTERVAL``, default 15)."""
    return _env_seconds(HEARTBEAT_INTERVAL_ENV, DEFAULT_HEARTBEAT_INTERVAL_S)


def heartbeat_timeout_s() -> float:
    """Silence after which a ``running`` run reads as ``interrupted`` (``$SSLMRI_HEARTBEAT_TIMEOUT``, default 300)."""
    return _env_seconds(HEARTBEAT_TIMEOUT_ENV, DEFAULT_HEARTBEAT_TIMEOUT_S)


def stale_cutoff(now: datetime | None = None) -> datetime:
    """Runs whose last sign of life is before this moment are no longer running."""
    return (now or _now()) - timedelta(seconds=heartbeat_timeout_s())


def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; the store always writes UTC.
    return value.replace(tzinfo=timezone.utc) if value is not None and value.tzinfo is None else value


def mask_url(url: str) -> str:
    """``url`` with any password hidden, for messages and titles."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not parseable: show as given (it cannot hold a usable password either)
        return url


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _retryable(exc: DBAPIError) -> bool:
    orig = getattr(exc, "orig", None)
    text = str(orig or exc).lower()
    if "database is locked" in text or "database table is locked" in text or "database is busy" in text:
        return True
    return getattr(orig, "sqlstate", None) in _RETRY_SQLSTATES or getattr(orig, "pgcode", None) in _RETRY_SQLSTATES


_retry_rng = random.Random()  # never the global one: training seeds and replays it


def retrying(method: F) -> F:
    """Retry a write (one transaction, so safe to repeat) while the database is locked; backoff 50 ms to 2 s."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        delay = 0.05
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                return method(*args, **kwargs)
            except DBAPIError as exc:
                if attempt == WRITE_ATTEMPTS or not _retryable(exc):
                    raise
                time.sleep(delay * (1.0 + _retry_rng.random()))
                delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")

    return wrapper  # type: ignore[return-value]


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
    device: Mapped[str | None] = mapped_column(String(255))
    out_dir: Mapped[str | None] = mapped_column(Text)
    checkpoint_path: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


def last_alive() -> ColumnElement[Any]:
    """A run's last sign of life: its heartbeat, else its start."""
    return func.coalesce(Run.heartbeat_at, Run.started_at, Run.created_at)


def effective_status(cutoff: datetime | None = None) -> ColumnElement[Any]:
    """SQL for the status readers show: ``running`` with no heartbeat since ``cutoff`` is ``interrupted``."""
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
    group_key: Mapped[str | None] = mapped_column(Text)  # the scan's split group: the bootstrap unit without subject ids


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
    raw_max: Mapped[float] = mapped_column(Float)
    raw_mean: Mapped[float] = mapped_column(Float)
    deletion_drop: Mapped[float | None] = mapped_column(Float)
    random_drop: Mapped[float | None] = mapped_column(Float)
    road: Mapped[float | None] = mapped_column(Float)
    pointing_hit: Mapped[bool | None] = mapped_column(Boolean)
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


@dataclass(frozen=True)
class RunRecord:
    """A run as readers see it (no ORM object leaves the store)."""

    id: int
    kind: str
    status: str
    parent_run_id: int | None
    task: str | None
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    config: dict[str, Any]
    git_sha: str | None
    host: str | None
    device: str | None
    out_dir: str | None
    checkpoint_path: str | None
    error: str | None
    heartbeat_at: datetime | None = None


def leakage_reasons(params: dict[str, str | None]) -> list[str]:
    """Why a run's results may be inflated by leakage, from its text params (empty: none known).

    Runs write ``leakage_reasons`` (a JSON list); runs from before it are judged by the old params
    (an image-level split, or test images in the SSL pool)."""
    import json

    raw = params.get("leakage_reasons")
    if raw:
        try:
            reasons = json.loads(raw)
        except ValueError:
            reasons = [raw]
        return [str(r) for r in reasons] if isinstance(reasons, list) else [str(reasons)]
    out = []
    if params.get("split_level") == "image":
        out.append("image-level split: no subject ids, slices of one patient may sit on two sides")
    try:
        overlap = float(params.get("ssl_pool_test_overlap") or 0)
    except ValueError:
        overlap = 0.0
    if overlap > 0:
        out.append(f"{overlap:g} test image(s) were in the SSL pretraining pool")
    return out


def resolve_db_url(db: str | None = None) -> str:
    """``--db`` beats ``SSLMRI_DB`` beats ``sqlite:///runs.db``; a bare path means a SQLite file."""
    url = db or os.environ.get("SSLMRI_DB") or DEFAULT_DB_URL
    return url if "://" in url else f"sqlite:///{url}"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the dashboard read while training writes; busy_timeout waits instead of failing.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; safe with WAL, far fewer fsyncs
    cursor.close()


def make_engine(url: str) -> Engine:
    """Engine for ``url``; SQLite files get WAL, a busy timeout and foreign keys."""
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1].split("?", 1)[0]
        if path and path != ":memory:" and not path.startswith("file:"):
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


def alembic_config() -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    return cfg


def head_revision() -> str:
    """The newest schema revision this code knows."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The store's schema revision (None: an empty database)."""
    from alembic.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def migrate(engine: Engine) -> None:
    """Upgrade the store's schema to the newest Alembic revision.

    Cheap when already there (one read). Otherwise the upgrade holds a lock (SQLite ``BEGIN
    IMMEDIATE``, a PostgreSQL advisory lock) so processes opening a new store at once take turns.
    """
    from alembic import command

    if current_revision(engine) == head_revision():
        return
    cfg = alembic_config()
    with engine.connect() as connection:
        sqlite = engine.dialect.name == "sqlite"
        if sqlite:
            # Batch mode rebuilds a table (copy, drop, rename): with foreign keys on, dropping `runs` would
            # cascade and delete every metric, param and prediction. The pragma only works outside a transaction.
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            # pysqlite would open the transaction lazily (and leave DDL outside it): take the write lock now.
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        elif engine.dialect.name == "postgresql":
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7155171)")
        cfg.attributes["connection"] = connection
        try:
            command.upgrade(cfg, "head")
            connection.commit()
        finally:
            if sqlite:
                connection.exec_driver_sql("PRAGMA foreign_keys=ON")


def _git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and len(sha) == 40 else None


def record_from(values: Any, cutoff: datetime | None = None) -> RunRecord:
    """A :class:`RunRecord` from an ORM run or a row mapping, with the status readers should see."""
    get = values.__getitem__ if hasattr(values, "keys") else lambda name: getattr(values, name)
    fields = {name: get(name) for name in RunRecord.__dataclass_fields__}
    for name in ("created_at", "started_at", "ended_at", "heartbeat_at"):
        fields[name] = _aware(fields[name])
    last = fields["heartbeat_at"] or fields["started_at"] or fields["created_at"]
    if fields["status"] == "running" and last is not None and last < (cutoff or stale_cutoff()):
        fields["status"] = "interrupted"
        fields["error"] = fields["error"] or STALE_ERROR.format(last=last.isoformat(timespec="seconds"))
    return RunRecord(**fields)


INSERT_CHUNK = 5000  # rows per executemany: bounded statement size on both SQLite and PostgreSQL


def _insert_chunked(conn: Any, table: type[Base], rows: list[dict[str, Any]]) -> None:
    """Insert ``rows`` into ``table`` through ``conn`` (a Connection or Session) in bounded batches."""
    for start in range(0, len(rows), INSERT_CHUNK):
        conn.execute(insert(table), rows[start : start + INSERT_CHUNK])


def _record(run: Run) -> RunRecord:
    return record_from(run)


class Heartbeat:
    """Call as often as you like (every step); writes the run's heartbeat at most once per interval."""

    def __init__(self, store: RunStore, run_id: int, interval_s: float | None = None) -> None:
        self.store, self.run_id = store, run_id
        self.interval_s = heartbeat_interval_s() if interval_s is None else interval_s
        self._last = time.monotonic()

    def __call__(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last >= self.interval_s:
            self._last = now
            self.store.heartbeat(self.run_id)


class RunStore:
    """Write access to one run store (SQLite file or PostgreSQL URL)."""

    def __init__(self, url: str | None = None, *, upgrade: bool = True) -> None:
        self.url = resolve_db_url(url)
        try:
            self.engine = make_engine(self.url)
            if upgrade:
                retrying(migrate)(self.engine)
        except Exception as exc:  # any driver/connection error becomes one clear line
            raise StoreError(
                f"cannot open run store {mask_url(self.url)!r} (--db / $SSLMRI_DB): "
                f"{exc.__class__.__name__}: {_one_line(getattr(exc, 'orig', None) or exc)}"
            ) from exc

    @property
    def display_url(self) -> str:
        """The store's URL with any password hidden."""
        return mask_url(self.url)

    # -- runs ---------------------------------------------------------------------------------
    @retrying
    def start_run(
        self,
        kind: str,
        config: dict[str, Any],
        *,
        task: str | None = None,
        parent_run_id: int | None = None,
        device: str | None = None,
    ) -> int:
        """Insert a ``running`` run and return its id."""
        now = _now()
        with Session(self.engine) as session, session.begin():
            run = Run(
                kind=kind,
                status="running",
                parent_run_id=parent_run_id,
                task=task,
                created_at=now,
                started_at=now,
                config=config,
                git_sha=_git_sha(),
                host=socket.gethostname(),
                device=device,
                heartbeat_at=now,
            )
            session.add(run)
            session.flush()
            return int(run.id)

    @retrying
    def update_run(self, run_id: int, **values: Any) -> None:
        """Set columns of a run (e.g. ``out_dir``, ``checkpoint_path``, ``config``, ``device``)."""
        with self.engine.begin() as conn:
            conn.execute(update(Run).where(Run.id == run_id).values(**values))

    def end_run(self, run_id: int, status: str = "finished", error: str | None = None) -> None:
        """Close a run with its final status (and the error message when it failed)."""
        if status not in RUN_STATUSES or status == "running":
            raise ValueError(f"not a final status: {status}")
        self.update_run(run_id, status=status, error=error, ended_at=_now())

    @retrying
    def heartbeat(self, run_id: int) -> None:
        """The run's process is alive: one cheap UPDATE of ``heartbeat_at``."""
        with self.engine.begin() as conn:
            conn.execute(update(Run).where(Run.id == run_id).values(heartbeat_at=_now()))

    @retrying
    def mark_stale_interrupted(self) -> int:
        """Store ``interrupted`` for every ``running`` run silent past the heartbeat timeout; returns how many.

        Readers already show such runs as interrupted; writers (the CLI) call this so the stored
        status agrees. ``ended_at`` becomes the last sign of life.
        """
        cutoff = stale_cutoff()
        with self.engine.begin() as conn:
            stale = conn.execute(
                select(Run.id, last_alive()).where(Run.status == "running", last_alive() < cutoff)
            ).all()
            for run_id, last in stale:
                last = _aware(last) if isinstance(last, datetime) else None
                conn.execute(
                    update(Run).where(Run.id == run_id, Run.status == "running", last_alive() < cutoff).values(
                        status="interrupted", ended_at=last,
                        error=STALE_ERROR.format(last=last.isoformat(timespec="seconds") if last else "?"),
                    )
                )
        return len(stale)

    @retrying
    def reopen_run(self, run_id: int) -> bool:
        """Set an interrupted, failed or silent run back to ``running`` (to resume it); False if it is alive or finished.

        One conditional UPDATE, so two processes resuming the same run cannot both get it.
        """
        with self.engine.begin() as conn:
            result = conn.execute(
                update(Run)
                .where(Run.id == run_id)
                .where(
                    (Run.status.in_(("interrupted", "failed")))
                    | and_(Run.status == "running", last_alive() < stale_cutoff())
                )
                .values(status="running", ended_at=None, error=None, heartbeat_at=_now())
            )
        return result.rowcount == 1

    @contextmanager
    def track(self, run_id: int) -> Iterator[int]:
        """Mark the run finished on success, failed (with the error) or interrupted otherwise."""
        try:
            yield run_id
        except KeyboardInterrupt as exc:
            self.end_run(run_id, "interrupted", str(exc) or "interrupted by the user")
            raise
        except BaseException as exc:
            self.end_run(run_id, "failed", f"{exc.__class__.__name__}: {exc}")
            raise
        else:
            self.end_run(run_id, "finished")

    def get_run(self, run_id: int) -> RunRecord:
        with Session(self.engine) as session:
            run = session.get(Run, run_id)
            if run is None:
                raise StoreError(f"no run with id {run_id} in {self.url}")
            return _record(run)

    def get_run_for(self, option: str, run_id: int) -> RunRecord:
        """:meth:`get_run` for an id the user gave with ``option``: an unknown run is a ValueError naming it."""
        try:
            return self.get_run(run_id)
        except StoreError as exc:
            raise ValueError(f"{option} {run_id}: {exc}") from None

    def list_runs(self, kind: str | None = None) -> list[RunRecord]:
        """Every run (oldest first); a silent ``running`` run comes back as ``interrupted``."""
        stmt = select(Run).order_by(Run.id)
        if kind:
            stmt = stmt.where(Run.kind == kind)
        with Session(self.engine) as session:
            return [_record(run) for run in session.scalars(stmt)]

    # -- params and metrics -------------------------------------------------------------------
    @retrying
    def log_params(self, run_id: int, params: dict[str, Any]) -> None:
        """Store flat key/value parameters (values as text; replaces keys already there)."""
        if not params:
            return
        with self.engine.begin() as conn:
            conn.execute(Param.__table__.delete().where(Param.run_id == run_id, Param.key.in_(list(params))))
            conn.execute(
                insert(Param),
                [{"run_id": run_id, "key": k, "value": None if v is None else str(v)} for k, v in params.items()],
            )

    @retrying
    def log_metrics(
        self, run_id: int, values: dict[str, float], *, step: int | None = None, epoch: int | None = None
    ) -> None:
        """Append one point per key to the run's metric series."""
        if not values:
            return
        rows = []
        for key, value in values.items():
            value = float(value)
            nan = math.isnan(value)
            rows.append(
                {"run_id": run_id, "key": key, "step": step, "epoch": epoch, "value": None if nan else value, "is_nan": nan}
            )
        with self.engine.begin() as conn:
            conn.execute(insert(Metric), rows)

    @retrying
    def truncate_metrics(self, run_id: int, after_step: int) -> int:
        """Delete the run's metric points logged after ``after_step`` (a resumed run logs them again)."""
        with self.engine.begin() as conn:
            result = conn.execute(delete(Metric).where(Metric.run_id == run_id, Metric.step > after_step))
        return int(result.rowcount or 0)

    def metric_series(self, run_id: int, key: str) -> list[tuple[int | None, int | None, float]]:
        """``(step, epoch, value)`` of one series in insertion order; NaN comes back as NaN."""
        stmt = select(Metric.step, Metric.epoch, Metric.value, Metric.is_nan).where(
            Metric.run_id == run_id, Metric.key == key
        ).order_by(Metric.id)
        with self.engine.connect() as conn:
            return [(s, e, math.nan if n else float(v)) for s, e, v, n in conn.execute(stmt)]

    def final_metrics(self, run_id: int) -> dict[str, float]:
        """The last value of every metric series of a run."""
        stmt = select(Metric.key, Metric.value, Metric.is_nan).where(Metric.run_id == run_id).order_by(Metric.id)
        with self.engine.connect() as conn:
            return {k: (math.nan if n else float(v)) for k, v, n in conn.execute(stmt)}

    # -- evaluation results -------------------------------------------------------------------
    @retrying
    def log_confusion(
        self, run_id: int, split: str, level: str, labels: Sequence[str], matrix: Sequence[Sequence[int]]
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                insert(Confusion),
                [{"run_id": run_id, "split": split, "level": level, "labels": list(labels),
                  "matrix": [[int(x) for x in row] for row in matrix]}],
            )

    # -- data -------------------------------------------------------------------------------------
    @retrying
    def save_manifest(self, manifest: Manifest) -> int:
        """Store a manifest once per content fingerprint (summary and rows in one transaction); returns the dataset id."""
        fingerprint = manifest.fingerprint()
        summary = manifest.check_summary()
        with Session(self.engine) as session, session.begin():
            existing = session.scalars(select(Dataset.id).where(Dataset.fingerprint == fingerprint)).first()
            if existing is not None:
                return int(existing)
            dataset = Dataset(
                fingerprint=fingerprint, root=manifest.root, created_at=_now(), n_files=int(summary["files"]),
                n_usable=int(summary["usable"]), n_images=int(summary["images"]), classes=summary["classes"],
                subject_pattern=manifest.subject_pattern, split_level=manifest.split_level, summary=summary,
            )
            session.add(dataset)
            session.flush()
            dataset_id = int(dataset.id)
            _insert_chunked(session, ManifestEntry,
                            [{"dataset_id": dataset_id, "key": r.key, **asdict(r)} for r in manifest.rows])
        return dataset_id

    @retrying
    def log_split(self, run_id: int, rows: Sequence[dict[str, Any]]) -> None:
        """Rows with ``key, subject, split, labeled``: where each image of the run went."""
        with self.engine.begin() as conn:
            _insert_chunked(conn, SplitAssignment, [{"run_id": run_id, **r} for r in rows])

    def params(self, run_id: int) -> dict[str, str | None]:
        """A run's parameters as stored (text values)."""
        with self.engine.connect() as conn:
            return dict(conn.execute(select(Param.key, Param.value).where(Param.run_id == run_id)).all())  # type: ignore[arg-type]

    def split_content(self, run_id: int) -> list[tuple[str, str, str | None, str | None]]:
        """``(key, split, content_hash, group_key)`` of each image of a run."""
        stmt = select(SplitAssignment.key, SplitAssignment.split, SplitAssignment.content_hash,
                      SplitAssignment.group_key).where(SplitAssignment.run_id == run_id)
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(stmt).all()]  # type: ignore[misc]

    def split_of(self, run_id: int) -> dict[str, str]:
        """``key -> split`` of a run's images."""
        stmt = select(SplitAssignment.key, SplitAssignment.split).where(SplitAssignment.run_id == run_id)
        with self.engine.connect() as conn:
            return dict(conn.execute(stmt).all())

    @retrying
    def save_audit(self, dataset_id: int, summary: dict[str, Any], details: dict[str, Any]) -> int:
        with Session(self.engine) as session, session.begin():
            audit = Audit(dataset_id=dataset_id, created_at=_now(), summary=summary, details=details)
            session.add(audit)
            session.flush()
            return int(audit.id)

    @retrying
    def log_predictions(self, run_id: int, rows: Sequence[dict[str, Any]]) -> None:
        """Rows with ``split, scan, subject, true_label, pred_label, confidence, probs``."""
        if rows:
            with self.engine.begin() as conn:
                conn.execute(insert(Prediction), [{"run_id": run_id, **row} for row in rows])


    # -- named results, CAM statistics, embeddings --------------------------------------------
    @retrying
    def log_result(self, run_id: int, name: str, payload: Any) -> None:
        """Store (or replace) one named JSON payload of a run."""
        with self.engine.begin() as conn:
            conn.execute(delete(Result).where(Result.run_id == run_id, Result.name == name))
            conn.execute(insert(Result), [{"run_id": run_id, "name": name, "payload": payload}])

    def results(self, run_id: int) -> dict[str, Any]:
        """``name -> payload`` of every result of a run."""
        stmt = select(Result.name, Result.payload).where(Result.run_id == run_id)
        with self.engine.connect() as conn:
            return dict(conn.execute(stmt).all())

    @retrying
    def log_cam_stats(self, run_id: int, rows: Sequence[dict[str, Any]]) -> None:
        """Rows with the columns of :class:`CamStat` (without ``id`` and ``run_id``)."""
        with self.engine.begin() as conn:
            _insert_chunked(conn, CamStat, [{"run_id": run_id, **r} for r in rows])

    @retrying
    def log_embeddings(self, run_id: int, method: str, rows: Sequence[dict[str, Any]]) -> None:
        """Replace a run's embedding for ``method``; rows have ``scan, subject, label, split, source, x, y``."""
        with self.engine.begin() as conn:
            conn.execute(delete(Embedding).where(Embedding.run_id == run_id, Embedding.method == method))
            _insert_chunked(conn, Embedding, [{"run_id": run_id, "method": method, **r} for r in rows])
