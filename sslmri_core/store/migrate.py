"""Schema migrations: the store's Alembic revision, the newest one, and upgrading to it.

The revisions live in ``store/migrations``; :class:`~sslmri_core.store.writer.RunStore` upgrades a
store when it opens it, readers never do. Only an empty database or one at a revision this code
knows is upgraded: anything else (another application's SQLite file, a newer sslmri's store) is
refused in one line. Alembic is imported lazily (the queries never need it).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from sqlalchemy import inspect
from sqlalchemy.engine import Connection, Engine

from sslmri_core.store.engine import StoreError, error_line, make_engine, mask_url, sqlite_path

VERSION_TABLE = "alembic_version"


def alembic_config() -> Any:
    """An Alembic ``Config`` pointing at the store's migration scripts."""
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


def known_revision(revision: str) -> bool:
    """True when ``revision`` is one of sslmri's schema revisions."""
    from alembic.script import ScriptDirectory

    try:
        return ScriptDirectory.from_config(alembic_config()).get_revision(revision) is not None
    except Exception:  # alembic's ResolutionError / CommandError: not ours
        return False


def store_name(engine: Engine) -> str:
    """How messages name the store: a SQLite file's path, else the URL with its password masked."""
    url = engine.url.render_as_string(hide_password=False)
    path = sqlite_path(url)
    return str(path) if path is not None else mask_url(url)


def check_is_run_store(connection: Connection, name: str) -> None:
    """Refuse (``StoreError``) a database that is neither empty nor at a revision sslmri knows."""
    from alembic.migration import MigrationContext

    try:
        revision = MigrationContext.configure(connection).get_current_revision()
    except Exception as exc:  # e.g. several rows in alembic_version: not ours
        raise StoreError(f"{name} is not an sslmri run store ({error_line(exc)})") from None
    if revision is not None and not known_revision(revision):
        raise StoreError(f"{name} is not an sslmri run store this version knows: its schema revision {revision!r} "
                         "belongs to another application or a newer sslmri; nothing was changed")
    tables = sorted(set(inspect(connection).get_table_names()) - {VERSION_TABLE})
    if revision is None and tables:
        shown = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
        raise StoreError(f"{name} is not an sslmri run store (it has tables {shown} and no sslmri schema "
                         "revision); nothing was changed: give --db a new file or an empty database")


def check_sqlite_file(url: str) -> None:
    """Refuse an existing SQLite file that is not a run store before anything writes to it.

    Read-only (``mode=ro``): a writable connection would already switch the file to WAL.
    :func:`migrate` checks again under its lock.
    """
    path = sqlite_path(url)
    if path is None or not path.is_file() or path.stat().st_size == 0:
        return
    engine = make_engine(url, read_only=True)
    try:
        with engine.connect() as connection:
            check_is_run_store(connection, str(path))
    finally:
        engine.dispose()


def migrate(engine: Engine) -> None:
    """Upgrade the store's schema to the newest Alembic revision.

    Cheap when already there (one read). Otherwise the upgrade holds a lock (SQLite ``BEGIN
    IMMEDIATE``, a PostgreSQL advisory lock) so processes opening a new store at once take turns,
    and only an empty database or an sslmri store is touched (:func:`check_is_run_store`).
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
            check_is_run_store(connection, store_name(engine))  # under the lock: what we upgrade is what we saw
            command.upgrade(cfg, "head")
            connection.commit()
        except BaseException:
            with contextlib.suppress(Exception):  # keep the original error
                connection.rollback()  # before the pragma below, which a transaction would ignore
            raise
        finally:
            if sqlite:
                connection.exec_driver_sql("PRAGMA foreign_keys=ON")


def upgrade_store(url: str | None = None) -> dict[str, Any]:
    """Upgrade the store at ``url`` (default ``$SSLMRI_DB``) to the newest revision; ``cli.py db upgrade``.

    Returns ``{"db": masked URL, "before": revision or None, "after": ..., "head": ...}``; a store that
    cannot be opened or upgraded is a ``StoreError`` naming it (password hidden) in one line.
    """
    from sslmri_core.store.engine import retrying
    from sslmri_core.store.writer import RunStore

    store = RunStore(url, upgrade=False)
    try:
        before = current_revision(store.engine)
        retrying(migrate)(store.engine)
        after = current_revision(store.engine)
    except StoreError:
        raise
    except Exception as exc:
        raise StoreError(f"cannot upgrade run store {store.display_url!r} (--db / $SSLMRI_DB): "
                         f"{error_line(exc, store.url)}") from exc
    return {"db": store.display_url, "before": before, "after": after, "head": head_revision()}
