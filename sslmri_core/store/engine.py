"""Connecting to the run store: the store URL, the one engine factory, URL masking, write retries.

:func:`make_engine` builds every engine of the store: writable ones for :class:`~sslmri_core.store.writer.RunStore`
(SQLite files get WAL, a busy timeout and foreign keys) and read-only ones for the queries
(:func:`read_engine`: SQLite files opened with ``mode=ro``, so a missing file is never created;
PostgreSQL sessions set read-only). :func:`resolve_db_url` checks a store URL (a typo is a
:class:`~sslmri_core.errors.UsageError` naming ``--db`` or ``$SSLMRI_DB``). :func:`mask_url` and
:func:`mask_text` are the one place secrets are hidden: no URL, and no driver error that may echo
one, reaches a message unmasked (:class:`StoreError` masks its own message).

Writes are retried with backoff (:func:`retrying`) while SQLite says the database is locked or
PostgreSQL reports a serialization failure or deadlock.
"""

from __future__ import annotations

import functools
import os
import random
import re
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.pool import NullPool

from sslmri_core.errors import UsageError

DEFAULT_DB_URL = "sqlite:///runs.db"
DB_ENV = "SSLMRI_DB"
# A value without ``://`` is a SQLite file only when it is named like one (``--db garbage`` is a typo).
SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
URL_EXAMPLES = "sqlite:///path/to/runs.db, a path ending in .db, or postgresql+psycopg://user@host:5432/dbname"
# Writes that find SQLite locked (or hit a PostgreSQL serialization failure) are retried.
WRITE_ATTEMPTS = 8
_RETRY_SQLSTATES = ("40001", "40P01")  # serialization_failure, deadlock_detected

MASK = "***"
# A query or DSN key naming a secret (password, passfile, sslpassword, ...): its value is masked.
_SECRET_WORDS = ("pass", "secret", "token")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
# ``key=value`` in a URL's query: the value runs to the next ``&``, ``;`` or ``#``.
_URL_PAIR = re.compile(r"([?&;])([^=&;?#]+)(=)([^&;#]*)")
# ``key=value`` in free text (a libpq DSN in a driver message): the value ends at a space or quote.
_TEXT_PAIR = re.compile(r"(^|[?&;\s(,])([^=&;?#\s'\"(,]+)(\s*=\s*)('[^']*'|\"[^\"]*\"|[^&;#\s'\",)]*)")
# A URL inside free text: the scheme and everything up to the next space or quote.
_TEXT_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]*")

F = TypeVar("F", bound=Callable[..., Any])


class StoreError(UsageError, RuntimeError):
    """The run store cannot be opened or does not hold what was asked for; its message is always masked."""

    def __init__(self, message: str) -> None:
        super().__init__(mask_text(message))


# -- masking ------------------------------------------------------------------------------------
def _is_secret(key: str) -> bool:
    name = unquote(key).strip().lower()
    return any(word in name for word in _SECRET_WORDS)


def _mask_pair(match: re.Match[str]) -> str:
    lead, key, equals, _value = match.groups()
    return f"{lead}{key}{equals}{MASK}" if _is_secret(key) else match.group(0)


def _password_span(url: str) -> tuple[int, int] | None:
    """Where the password of ``scheme://user:password@host...`` lies in ``url`` (start, end), or None.

    The password is everything between the first ``:`` after ``//`` and the LAST ``@`` (an
    unescaped ``@`` in a password is hidden whole, not cut at its first ``@``).
    """
    scheme = _SCHEME.match(url)
    if scheme is None:
        return None
    at = url.rfind("@", scheme.end())
    colon = url.find(":", scheme.end(), max(at, 0))
    return (colon + 1, at) if at >= 0 and colon >= 0 else None


def _mask_userinfo(url: str) -> str:
    """``scheme://user:password@host...`` -> ``scheme://user:***@host...`` (see :func:`_password_span`)."""
    span = _password_span(url)
    return url if span is None else f"{url[:span[0]]}{MASK}{url[span[1]:]}"


def mask_url(url: str) -> str:
    """``url`` with every secret hidden, for messages and titles; never raises, never parses with SQLAlchemy.

    Fail-closed: the password (see :func:`_mask_userinfo`) and query values of keys like
    ``password``, ``passfile``, ``sslpassword`` become ``***``; a value with no ``scheme://``
    keeps only what follows its last ``@`` and has its ``key=value`` secrets masked.
    """
    text = str(url)
    if _SCHEME.match(text) is None:
        text = mask_text(text)
        return f"{MASK}{text[text.rfind('@'):]}" if "@" in text else text
    return _URL_PAIR.sub(_mask_pair, _mask_userinfo(text))


def _secrets_of(url: str) -> set[str]:
    """The literal secrets in ``url`` (as written and percent-decoded), at least 3 characters long."""
    span = _password_span(url)
    found = [url[span[0]:span[1]]] if span else []
    found += [m.group(4) for m in _URL_PAIR.finditer(url) if _is_secret(m.group(2))]
    return {s for raw in found for s in (raw, unquote(raw)) if len(s) >= 3}


def mask_text(text: str, url: str | None = None) -> str:
    """Free text (a driver's error, a message) with every URL password and ``password=...`` masked.

    With ``url``, the literal secrets of that URL are also removed wherever they appear (a driver
    may echo a DSN in another form).
    """
    for secret in sorted(_secrets_of(url), key=len, reverse=True) if url else ():
        text = text.replace(secret, MASK)
    text = _TEXT_URL.sub(lambda m: _URL_PAIR.sub(_mask_pair, _mask_userinfo(m.group(0))), text)
    return _TEXT_PAIR.sub(_mask_pair, text)


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines included) as one space."""
    return " ".join(str(text).split())


def error_line(exc: BaseException, url: str | None = None) -> str:
    """``ClassName: message`` of a (driver) error in one masked line (see :func:`mask_text`)."""
    reason = getattr(exc, "orig", None) or exc
    return f"{reason.__class__.__name__}: {mask_text(one_line(str(reason)), url)}"


# -- URLs ---------------------------------------------------------------------------------------
def resolve_db_url(db: str | None = None) -> str:
    """``--db`` beats ``$SSLMRI_DB`` beats ``sqlite:///runs.db``; checked, never printed raw.

    A value without ``scheme://`` is a SQLite file when its name ends in .db, .sqlite or .sqlite3;
    anything else that is not a SQLAlchemy URL of a known database is a :class:`UsageError`
    naming the option (``--db`` or ``$SSLMRI_DB``).
    """
    option = "--db" if db else f"${DB_ENV}"
    value = db or os.environ.get(DB_ENV) or DEFAULT_DB_URL
    if "://" not in value:
        if ":" in value or Path(value).suffix.lower() not in SQLITE_SUFFIXES:
            raise UsageError(_not_a_url(option, value, "no scheme:// and not a .db file"))
        value = f"sqlite:///{value}"
    _check_url(value, option)
    return value


def _not_a_url(option: str, value: str, reason: str) -> str:
    return f"{option} {mask_url(value)!r} is not a run store URL ({reason}); give {URL_EXAMPLES}"


def _check_url(url: str, option: str) -> None:
    """Raise :class:`UsageError` unless SQLAlchemy parses ``url`` unambiguously and knows its database."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise UsageError(_not_a_url(option, url, "not dialect+driver://user@host/dbname")) from None
    except ValueError:  # int() of the port
        raise UsageError(_not_a_url(option, url, "the port is not a number")) from None
    except Exception:  # anything else SQLAlchemy cannot parse: refuse, never guess
        raise UsageError(_not_a_url(option, url, "cannot be parsed")) from None
    try:
        parsed.get_dialect()
    except Exception:  # NoSuchModuleError
        raise UsageError(_not_a_url(option, url, f"unknown database {parsed.drivername!r}")) from None
    if "@" in (parsed.host or "") + (parsed.username or ""):
        raise UsageError(f"{option} {mask_url(url)!r}: the user name or password contains '@'; "
                         "write it as %40 in the URL")


def display_url(url: str | None = None) -> str:
    """The resolved store URL (:func:`resolve_db_url`) with any password masked, for showing to people."""
    return mask_url(resolve_db_url(url))


def sqlite_path(url: str) -> Path | None:
    """Absolute file of a SQLite file URL; None for other databases and in-memory SQLite."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database).expanduser().resolve()


# -- engines ------------------------------------------------------------------------------------
def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the dashboard read while training writes; busy_timeout waits instead of failing.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; safe with WAL, far fewer fsyncs
    cursor.close()


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


def make_engine(url: str, *, read_only: bool = False) -> Engine:
    """Engine for ``url``; cheap, opens no connection.

    Writable (default): SQLite files get WAL, a busy timeout and foreign keys, and their folder is
    created. ``read_only``: SQLite files open with ``mode=ro`` on every connection (no pool), a
    PostgreSQL session refuses writes; nothing is created.
    """
    if read_only:
        path = sqlite_path(url)
        return _read_only_sqlite(path) if path is not None else _read_only_server(url)
    if url.startswith("sqlite"):
        path = sqlite_path(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


def read_engine(url: str | None = None) -> Engine:
    """A read-only engine for the store at ``url`` (see :func:`resolve_db_url`); never touches the database."""
    return make_engine(resolve_db_url(url), read_only=True)


# -- write retries ------------------------------------------------------------------------------
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
