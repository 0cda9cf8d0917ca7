"""Write access to the run store: :class:`RunStore`, used by training, evaluation and the CLI.

Every run, its config, parameters, metric series, confusion matrices and per-scan predictions go
here, and so do data-set manifests, each run's split assignment and data audits. Opening a store
upgrades its schema to the newest Alembic revision (:mod:`sslmri_core.store.migrate`); a database of
another application is refused, and commands that only read never create a missing SQLite file
(``RunStore(url, create=False)``). Errors are :class:`~sslmri_core.store.engine.StoreError` (also
importable from here), one line with every secret masked. Every write is one transaction, retried
while the database is locked (:func:`sslmri_core.store.engine.retrying`).
ORM objects never leave the store: readers get :class:`~sslmri_core.store.status.RunRecord` here or
DataFrames from :mod:`sslmri_core.store.queries`. A silent ``running`` run reads as ``interrupted``
(:mod:`sslmri_core.store.status`), and so, at once, does one whose process on this host is gone;
writers (the CLI) may store that with :meth:`RunStore.mark_stale_interrupted`.
"""

from __future__ import annotations

import math
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import and_, delete, insert, select, update
from sqlalchemy.orm import Session

from sslmri_core.data.manifest import Manifest
from sslmri_core.errors import UsageError
from sslmri_core.store.engine import (
    StoreError,
    error_line,
    make_engine,
    mask_url,
    resolve_db_url,
    retrying,
    sqlite_path,
)
from sslmri_core.store.migrate import check_sqlite_file, migrate
from sslmri_core.store.schema import (
    RUN_STATUSES,
    Audit,
    Base,
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
    SplitAssignment,
    last_alive,
)
from sslmri_core.store.status import (
    GONE_ERROR,
    STALE_ERROR,
    RunRecord,
    as_utc,
    check_environment,
    owner,
    pid_alive,
    process_gone,
    record_from,
    stale_cutoff,
    this_host,
    utc_now,
)


def _git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            check=False,
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and len(sha) == 40 else None


INSERT_CHUNK = 5000  # rows per executemany: bounded statement size on both SQLite and PostgreSQL


def _insert_chunked(conn: Any, table: type[Base], rows: list[dict[str, Any]]) -> None:
    """Insert ``rows`` into ``table`` through ``conn`` (a Connection or Session) in bounded batches."""
    for start in range(0, len(rows), INSERT_CHUNK):
        conn.execute(insert(table), rows[start : start + INSERT_CHUNK])


def _record(run: Run) -> RunRecord:
    return record_from(run)


def _require_file(url: str) -> None:
    """A SQLite store that does not exist is an error (for commands that only read), never created."""
    path = sqlite_path(url)
    if path is not None and not path.is_file():
        raise StoreError(f"no run store at {path} (--db / $SSLMRI_DB): nothing has been recorded there; "
                         "check the path, or record a run first (e.g. `python cli.py pretrain`)")


def _insert_dataset(session: Session, values: dict[str, Any]) -> int | None:
    """Insert a data set unless its fingerprint is already stored; its id, or None when another process won.

    ``ON CONFLICT DO NOTHING`` on SQLite and PostgreSQL: a racing insert of the same fingerprint
    waits for the other transaction and then does nothing, instead of a unique-key error.
    """
    found = session.execute(_insert_or_skip(session.get_bind().dialect.name, values)).scalar_one_or_none()
    return None if found is None else int(found)


def _insert_or_skip(dialect: str, values: dict[str, Any]) -> Any:
    """``INSERT ... ON CONFLICT (fingerprint) DO NOTHING RETURNING id`` of a data set, in ``dialect``."""
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql

        stmt: Any = postgresql.insert(Dataset).on_conflict_do_nothing(index_elements=[Dataset.fingerprint])
    elif dialect == "sqlite":
        from sqlalchemy.dialects import sqlite

        stmt = sqlite.insert(Dataset).on_conflict_do_nothing(index_elements=[Dataset.fingerprint])
    else:  # another database: a plain insert (a racing duplicate is a unique-key error there)
        stmt = insert(Dataset)
    return stmt.values(**values).returning(Dataset.id)


def _store_gone(conn: Any) -> int:
    """Store ``interrupted`` for the ``running`` runs of this host whose process is gone; how many."""
    host = this_host()
    mine = and_(Run.status == "running", Run.host == host)
    rows = conn.execute(select(Run.id, Run.pid, last_alive()).where(mine, Run.pid.is_not(None))).all()
    gone = [(run_id, pid, as_utc(last) if isinstance(last, datetime) else None)
            for run_id, pid, last in rows if not pid_alive(pid)]
    for run_id, pid, last in gone:
        conn.execute(update(Run).where(Run.id == run_id, mine, Run.pid == pid).values(
            status="interrupted", ended_at=last, error=GONE_ERROR.format(pid=pid, host=host)))
    return len(gone)


class RunStore:
    """Write access to one run store (SQLite file or PostgreSQL URL)."""

    def __init__(self, url: str | None = None, *, upgrade: bool = True, create: bool = True) -> None:
        """Open (and upgrade) the store at ``url`` (see :func:`resolve_db_url`).

        ``create=False`` (commands that only read): a SQLite file that does not exist is a
        :class:`StoreError` instead of a new empty store. A database that is neither empty nor an
        sslmri store is refused, never migrated (:func:`~sslmri_core.store.migrate.migrate`).
        """
        self.url = resolve_db_url(url)
        check_environment()
        if not create:
            _require_file(self.url)
        try:
            if upgrade:
                check_sqlite_file(self.url)  # another application's file: refused untouched
            self.engine = make_engine(self.url)
            if upgrade:
                retrying(migrate)(self.engine)
        except StoreError:
            raise
        except Exception as exc:  # any driver/connection error becomes one clear, masked line
            raise StoreError(f"cannot open run store {mask_url(self.url)!r} (--db / $SSLMRI_DB): "
                             f"{error_line(exc, self.url)}") from exc

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
        """Insert a ``running`` run owned by this process (its host and pid) and return its id."""
        now = utc_now()
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
                device=device,
                heartbeat_at=now,
                **owner(),
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
        self.update_run(run_id, status=status, error=error, ended_at=utc_now())

    @retrying
    def heartbeat(self, run_id: int) -> None:
        """The run's process is alive: one cheap UPDATE of ``heartbeat_at``."""
        with self.engine.begin() as conn:
            conn.execute(update(Run).where(Run.id == run_id).values(heartbeat_at=utc_now()))

    @retrying
    def mark_stale_interrupted(self) -> int:
        """Store ``interrupted`` for every ``running`` run silent past the heartbeat timeout, or whose
        process on this host is gone; returns how many.

        Readers already show such runs as interrupted; writers (the CLI) call this so the stored
        status agrees (the dashboard's SQL knows only the heartbeat). ``ended_at`` becomes the last sign of life.
        """
        cutoff = stale_cutoff()
        with self.engine.begin() as conn:
            stale = conn.execute(
                select(Run.id, last_alive()).where(Run.status == "running", last_alive() < cutoff)
            ).all()
            for run_id, last in stale:
                last = as_utc(last) if isinstance(last, datetime) else None
                conn.execute(
                    update(Run).where(Run.id == run_id, Run.status == "running", last_alive() < cutoff).values(
                        status="interrupted", ended_at=last,
                        error=STALE_ERROR.format(last=last.isoformat(timespec="seconds") if last else "?"),
                    )
                )
            return len(stale) + _store_gone(conn)

    @retrying
    def reopen_run(self, run_id: int) -> bool:
        """Set an interrupted, failed or gone run back to ``running``, owned by this process (to resume
        it); False if alive or finished.

        Gone: silent past the heartbeat timeout, or its process on this host no longer exists. One
        conditional UPDATE (on the dead pid too), so two processes resuming the same run cannot both get it.
        """
        silent = and_(Run.status == "running", last_alive() < stale_cutoff())
        takeable = Run.status.in_(("interrupted", "failed")) | silent
        with self.engine.begin() as conn:
            found = conn.execute(select(Run.host, Run.pid).where(Run.id == run_id)).first()
            if found is not None and process_gone(found.host, found.pid):
                takeable = takeable | and_(Run.status == "running", Run.host == found.host, Run.pid == found.pid)
            result = conn.execute(
                update(Run).where(Run.id == run_id).where(takeable)
                .values(status="running", ended_at=None, error=None, heartbeat_at=utc_now(), **owner())
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
                raise StoreError(f"no run with id {run_id} in {self.display_url}")
            return _record(run)

    def get_run_for(self, option: str, run_id: int) -> RunRecord:
        """:meth:`get_run` for an id the user gave with ``option``: an unknown run is a UsageError naming it."""
        try:
            return self.get_run(run_id)
        except StoreError as exc:
            raise UsageError(f"{option} {run_id}: {exc}") from None

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
            conn.execute(delete(Param).where(Param.run_id == run_id, Param.key.in_(list(params))))
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
                {"run_id": run_id, "key": key, "step": step, "epoch": epoch,
                 "value": None if nan else value, "is_nan": nan}
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
            return [(s, e, math.nan if n else float(cast(float, v))) for s, e, v, n in conn.execute(stmt)]

    def final_metrics(self, run_id: int) -> dict[str, float]:
        """The last value of every metric series of a run."""
        stmt = select(Metric.key, Metric.value, Metric.is_nan).where(Metric.run_id == run_id).order_by(Metric.id)
        with self.engine.connect() as conn:
            return {k: (math.nan if n else float(cast(float, v))) for k, v, n in conn.execute(stmt)}

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
        """Store a manifest once per content fingerprint (summary and rows in one transaction).

        Returns the data set's id (the existing one when that fingerprint is already stored, also
        when another process stores it at the same moment: both get the same id).
        """
        fingerprint = manifest.fingerprint()
        summary: dict[str, Any] = manifest.check_summary()
        by_fingerprint = select(Dataset.id).where(Dataset.fingerprint == fingerprint)
        with Session(self.engine) as session, session.begin():
            existing = session.scalars(by_fingerprint).first()
            if existing is not None:
                return int(existing)
            dataset_id = _insert_dataset(session, dict(
                fingerprint=fingerprint, root=manifest.root, created_at=utc_now(), n_files=int(summary["files"]),
                n_usable=int(summary["usable"]), n_images=int(summary["images"]), classes=summary["classes"],
                subject_pattern=manifest.subject_pattern, split_level=manifest.split_level, summary=summary,
            ))
            if dataset_id is None:  # another process stored it meanwhile (its rows too: one transaction)
                return int(session.scalars(by_fingerprint).one())
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
            return dict(conn.execute(select(Param.key, Param.value).where(Param.run_id == run_id)).all())

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
            audit = Audit(dataset_id=dataset_id, created_at=utc_now(), summary=summary, details=details)
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
