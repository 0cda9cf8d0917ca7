"""The run store against hostile input: passwords never printed, concurrent manifest inserts,
values that are not store URLs, other applications' databases, and bad environment values.

Tests that take ``db_url`` run on a SQLite file and on a fresh PostgreSQL database (skipped
locally without ``$SSLMRI_TEST_PG_URL``, required in CI).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from cli_json import invoke
from sqlalchemy import event, func, inspect, select, text
from sqlalchemy.engine import make_url

from sslmri_core.errors import UsageError
from sslmri_core.store import engine as store_engine
from sslmri_core.store.engine import make_engine, mask_url, resolve_db_url
from sslmri_core.store.writer import RunStore, StoreError
from tests.conftest import ROOT, fresh_postgres_database, postgres_base_url

SECRET = "S3cret"


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python cli.py ARGS`` in a fresh process (what a person runs), with a short connect timeout."""
    environ = {**os.environ, "PGCONNECT_TIMEOUT": "5", **(env or {})}
    return subprocess.run([sys.executable, "cli.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=environ)


def _one_line_error(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


# -- 1. passwords are never printed ------------------------------------------------------------------
@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql+psycopg://alice:S3cret@db.example.org:5432/runs",
     "postgresql+psycopg://alice:***@db.example.org:5432/runs"),
    ("postgresql://u:p@S3cret@host/db", "postgresql://u:***@host/db"),  # an unescaped @ in the password
    ("postgresql://u:S3cret@host:54x2/db", "postgresql://u:***@host:54x2/db"),  # a typo in the port
    ("postgresql://u:S3%40cret@host/db", "postgresql://u:***@host/db"),
    ("postgresql://u:a/b?S3cret@host/db", "postgresql://u:***@host/db"),
    ("postgresql://host/db?password=S3cret&sslmode=require", "postgresql://host/db?password=***&sslmode=require"),
    ("postgresql://host/db?sslmode=require&PASSWORD=S3cret", "postgresql://host/db?sslmode=require&PASSWORD=***"),
    ("postgresql://host/db?passfile=/home/S3cret/.pgpass", "postgresql://host/db?passfile=***"),
    ("postgresql://host/db?sslpassword=S3cret", "postgresql://host/db?sslpassword=***"),
    ("postgresql://host/db?password=p@S3cret", "postgresql://host/db?password=***"),
    ("postgresql://alice:S3cret@host/db?password=S3cret", "postgresql://alice:***@host/db?password=***"),
    ("alice:S3cret@host/db", "***@host/db"),  # no scheme: not parsed, masked
    ("host=db user=alice password=S3cret", "host=db user=alice password=***"),
])
def test_mask_url_hides_every_password_form(url: str, shown: str) -> None:
    assert mask_url(url) == shown
    assert SECRET not in mask_url(url) and "cret" not in mask_url(url)


@pytest.mark.parametrize("url", [
    "sqlite:///runs.db", "sqlite:////tmp/some folder/runs.db", "sqlite://", "sqlite:///:memory:",
    "postgresql+psycopg://alice@db.example.org:5432/sslmri?sslmode=require", "garbage",
])
def test_mask_url_leaves_urls_without_secrets_alone(url: str) -> None:
    assert mask_url(url) == url


def test_mask_text_masks_urls_and_dsns_inside_driver_messages() -> None:
    message = ("connection failed: could not translate host name \"h\" for 'postgresql://alice:p@S3cret@h/db'; "
               "dsn: host=h user=alice password=S3cret dbname=db; retry postgres://bob:S3cret@other/db")
    masked = store_engine.mask_text(message)
    assert SECRET not in masked and "cret" not in masked
    assert "postgresql://alice:***@h/db" in masked and "password=***" in masked and "bob:***@other" in masked
    assert store_engine.mask_text("no such table: runs (sqlite:////tmp/x/runs.db)") == "no such table: runs (sqlite:////tmp/x/runs.db)"


def _with_password(db_url: str) -> tuple[str, str]:
    """``db_url`` with a password in it, and that password (SQLite ignores one in its query; PostgreSQL's
    is the server's)."""
    if db_url.startswith("sqlite:///"):
        return f"{db_url}?password={SECRET}", SECRET
    password = make_url(db_url).password
    if not password:
        pytest.skip("the PostgreSQL test URL has no password to hide")
    return db_url, str(password)


@pytest.mark.filterwarnings("ignore:Query string argument")  # pysqlite ignores ?password=
def test_unknown_run_names_the_store_without_its_password(db_url: str) -> None:
    url, password = _with_password(db_url)
    store = RunStore(url)
    hidden = (f":{password}@", f"={password}", url)
    for call in (lambda: store.get_run(999), lambda: store.get_run_for("--from-run", 999)):
        with pytest.raises(ValueError, match="999") as info:
            call()
        message = str(info.value)
        assert not any(h in message for h in hidden) and "***" in message, message
    result = _cli("runs", "show", "999", "--db", url, env={"PYTHONWARNINGS": "ignore"})
    assert result.returncode == 2
    line = _one_line_error(result.stderr)
    assert "no run with id 999" in line and "***" in line, line
    assert not any(h in line + result.stdout for h in hidden), line


@pytest.mark.postgres
def test_wrong_password_on_the_server_is_not_echoed() -> None:
    """PostgreSQL only (SQLite has no password): skipped locally without a server, run in CI."""
    for db_url in fresh_postgres_database(postgres_base_url()):  # one fresh database, dropped afterwards
        wrong = make_url(db_url).set(password=f"Wrong{SECRET}").render_as_string(hide_password=False)
        result = _cli("runs", "list", "--db", wrong)
        assert f"Wrong{SECRET}" not in result.stdout + result.stderr


@pytest.mark.parametrize("url", [
    f"postgresql+psycopg://alice:{SECRET}@127.0.0.1:1/x",  # nothing listens on port 1: fails fast
    f"postgresql+psycopg://alice:{SECRET}@127.0.0.1:54x2/x",  # a typo in the port
    f"postgresql+psycopg://alice:p@{SECRET}@127.0.0.1:1/x",  # an unescaped @
    f"postgresql+psycopg://127.0.0.1:1/x?password={SECRET}",
])
def test_cli_never_prints_a_password(url: str) -> None:
    result = _cli("runs", "show", "999", "--db", url)
    assert result.returncode == 2
    _one_line_error(result.stderr)
    assert "cret" not in result.stdout + result.stderr


def test_cli_names_a_sqlite_store_as_given(tmp_path: Path) -> None:
    path = tmp_path / "my runs" / "runs.db"
    RunStore(f"sqlite:///{path}")
    result = _cli("runs", "show", "999", "--db", f"sqlite:///{path}")
    assert result.returncode == 2
    assert f"no run with id 999 in sqlite:///{path}" in _one_line_error(result.stderr)


# -- 2. concurrent manifest inserts -------------------------------------------------------------------
def _manifest(rows: int = 50) -> Any:
    from sslmri_core.data.manifest import Manifest, ManifestRow

    return Manifest("/d", [
        ManifestRow(path=f"/d/a/x{i}.png", rel_path=f"a/x{i}.png", label="a", folder_label="a", subject=f"sub-{i}",
                    given_split=None, content_hash=f"h{i}", file_size=10, width=8, height=8, mode="L", bit_depth=8)
        for i in range(rows)
    ], "bids")


def test_two_stores_saving_one_manifest_at_once_share_one_dataset(db_url: str) -> None:
    """B looks for the fingerprint after A inserted its data set but before A committed: both get A's id."""
    from sslmri_core.store.schema import Dataset, ManifestEntry

    first, second = RunStore(db_url), RunStore(db_url)
    first_inserted, second_looked = threading.Event(), threading.Event()

    @event.listens_for(first.engine, "after_cursor_execute")
    def _first_inserted(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO DATASETS"):
            first_inserted.set()

    @event.listens_for(first.engine, "before_cursor_execute")
    def _hold_first(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO MANIFEST_ROWS"):
            second_looked.wait(10)  # A's data-set row exists, uncommitted, until B tries to insert one too

    @event.listens_for(second.engine, "before_cursor_execute")
    def _second_looked(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO DATASETS"):
            second_looked.set()  # B found no data set and inserts its own

    manifest = _manifest()
    ids: dict[str, int] = {}
    errors: list[str] = []

    def save(name: str, store: RunStore) -> None:
        try:
            ids[name] = store.save_manifest(manifest)
        except Exception as exc:
            errors.append(f"{name}: {exc.__class__.__name__}: {exc}")

    threads = [threading.Thread(target=save, args=("first", first))]
    threads[0].start()
    assert first_inserted.wait(30)
    threads.append(threading.Thread(target=save, args=("second", second)))
    threads[1].start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert ids["first"] == ids["second"]
    with first.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Dataset)).scalar_one() == 1
        assert conn.execute(select(func.count()).select_from(ManifestEntry)).scalar_one() == 50


def test_many_threads_racing_on_a_fresh_store_share_one_dataset(db_url: str) -> None:
    stores = [RunStore(db_url) for _ in range(4)]
    manifest = _manifest(2000)  # the winner holds its transaction while inserting these
    barrier = threading.Barrier(len(stores))
    ids: list[int] = []
    errors: list[str] = []

    def save(store: RunStore) -> None:
        barrier.wait(30)
        try:
            ids.append(store.save_manifest(manifest))
        except Exception as exc:
            errors.append(f"{exc.__class__.__name__}: {exc}")

    threads = [threading.Thread(target=save, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors and len(set(ids)) == 1 and len(ids) == len(stores), (errors, ids)


# -- 3. values that are not store URLs, missing files, other applications' databases ------------------
def test_a_value_that_is_not_a_url_is_an_error_naming_its_option(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UsageError, match=r"--db 'garbage' is not a run store URL"):
        resolve_db_url("garbage")
    monkeypatch.setenv("SSLMRI_DB", "garbage")
    with pytest.raises(UsageError, match=r"\$SSLMRI_DB 'garbage' is not a run store URL"):
        resolve_db_url(None)
    for bad in (f"postgresql://u:{SECRET}@h:54x2/db", f"postgresql://u:p@{SECRET}@h/db", "nosuchdb://h/db"):
        with pytest.raises(UsageError, match="--db") as info:
            resolve_db_url(bad)
        assert "cret" not in str(info.value) and "\n" not in str(info.value)
    assert resolve_db_url("other.db") == "sqlite:///other.db"  # a SQLite file path still works
    assert resolve_db_url("/tmp/x/runs.sqlite3") == "sqlite:////tmp/x/runs.sqlite3"


def test_cli_refuses_garbage_db_and_creates_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = invoke(["runs", "list", "--db", "garbage"])
    assert code == 2 and "--db 'garbage'" in _one_line_error(err)
    assert list(tmp_path.iterdir()) == []


def test_a_missing_sqlite_store_is_not_created_for_reading(tmp_path: Path) -> None:
    path = tmp_path / "absent" / "runs.db"
    with pytest.raises(StoreError, match="no run store at") as info:
        RunStore(f"sqlite:///{path}", create=False)
    assert str(path) in str(info.value)
    assert not path.exists() and not path.parent.exists()
    RunStore(f"sqlite:///{path}")  # a writing command creates it
    assert RunStore(f"sqlite:///{path}", create=False).list_runs() == []


@pytest.mark.parametrize("command", [["runs", "list"], ["runs", "show", "1"]])
def test_read_commands_refuse_a_missing_sqlite_store(command: list[str], tmp_path: Path) -> None:
    path = tmp_path / "absent" / "runs.db"
    code, _, err = invoke([*command, "--db", f"sqlite:///{path}"])
    assert code == 2 and str(path) in _one_line_error(err)
    assert not path.exists() and not path.parent.exists()


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return set(inspect(conn).get_table_names())
    finally:
        engine.dispose()


def test_the_image_cache_database_is_not_migrated(tmp_path: Path) -> None:
    from sslmri_core.data.cache import ImageCache

    ImageCache(tmp_path / "images").conn.close()
    path = tmp_path / "images" / "cache.db"
    url = f"sqlite:///{path}"
    before = path.read_bytes()
    with pytest.raises(StoreError, match="not an sslmri run store") as info:
        RunStore(url)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    for command in (["runs", "list"], ["db", "upgrade"], ["runs", "show", "1"]):
        code, _, err = invoke([*command, "--db", url])
        assert code == 2 and "not an sslmri run store" in _one_line_error(err)
    assert path.read_bytes() == before  # not a byte changed
    assert _tables(url) == {"arrays_v2", "files_v3"}


def test_a_foreign_database_is_refused(db_url: str) -> None:
    path = Path(db_url.removeprefix("sqlite:///")) if db_url.startswith("sqlite:///") else None
    if path is not None:  # a plain SQLite file (rollback journal, not WAL), as another program makes it
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT)")
        conn.close()
        before = path.read_bytes()
    else:
        engine = make_engine(db_url)
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT)"))
        engine.dispose()
    with pytest.raises(StoreError, match="not an sslmri run store"):
        RunStore(db_url)
    if path is not None:
        assert path.read_bytes() == before  # not even switched to WAL
    assert _tables(db_url) == {"accounts"}


def test_an_unknown_schema_revision_is_refused(db_url: str) -> None:
    engine = make_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)"))
        conn.execute(text("INSERT INTO alembic_version VALUES ('f00dfeedbeef')"))
    engine.dispose()
    with pytest.raises(StoreError, match="f00dfeedbeef"):
        RunStore(db_url)
    assert _tables(db_url) == {"alembic_version"}


def test_an_empty_sqlite_file_becomes_a_store(tmp_path: Path) -> None:
    path = tmp_path / "blank.db"
    sqlite3.connect(path).close()
    store = RunStore(f"sqlite:///{path}")
    assert store.get_run(store.start_run("pretrain", {})).status == "running"


# -- 4. environment values ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["SSLMRI_HEARTBEAT_TIMEOUT", "SSLMRI_HEARTBEAT_INTERVAL"])
@pytest.mark.parametrize("value", ["inf", "-inf", "abc", "-1", "0", "nan", "1e400", "1e30", "5 s"])
def test_bad_heartbeat_values_are_one_clear_usage_error(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sslmri_core.store import status

    monkeypatch.setenv(name, value)
    reader = status.heartbeat_timeout_s if name.endswith("TIMEOUT") else status.heartbeat_interval_s
    with pytest.raises(UsageError, match=rf"\${name}.*finite.*> 0") as info:
        reader()
    assert "\n" not in str(info.value)
    with pytest.raises(UsageError, match=name):
        status.check_environment()


def test_good_heartbeat_values_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    from sslmri_core.store import status

    monkeypatch.setenv("SSLMRI_HEARTBEAT_TIMEOUT", " 2.5 ")
    monkeypatch.delenv("SSLMRI_HEARTBEAT_INTERVAL", raising=False)
    assert status.heartbeat_timeout_s() == 2.5 and status.heartbeat_interval_s() == 15.0
    status.check_environment()


@pytest.mark.parametrize(("name", "value"), [
    ("SSLMRI_HEARTBEAT_TIMEOUT", "inf"), ("SSLMRI_HEARTBEAT_TIMEOUT", "abc"),
    ("SSLMRI_HEARTBEAT_INTERVAL", "0"), ("SSLMRI_DB", f"postgresql://u:{SECRET}@h:54x2/db"),
])
def test_cli_with_a_bad_environment_value_exits_2_in_one_line(
    name: str, value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = ["--db", f"sqlite:///{tmp_path / 'runs.db'}"] if name != "SSLMRI_DB" else []
    RunStore(f"sqlite:///{tmp_path / 'runs.db'}")
    monkeypatch.setenv(name, value)
    for command in (["runs", "list"], ["runs", "show", "1"]):
        code, _, err = invoke([*command, *db])
        line = _one_line_error(err)
        assert code == 2 and name in line and "cret" not in line, line


def _open_page(page: str | None) -> Any:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "dashboard" / "Home.py"), default_timeout=30).run()
    if page:
        at.switch_page(page)
        at.run()
    return at


@pytest.mark.parametrize("page", [None, "pages/1_Runs.py", "pages/2_SSL_vs_Supervised.py"])
@pytest.mark.parametrize(("name", "value"), [
    ("SSLMRI_HEARTBEAT_TIMEOUT", "abc"), ("SSLMRI_HEARTBEAT_TIMEOUT", "-1"), ("SSLMRI_HEARTBEAT_TIMEOUT", "nan"),
    ("SSLMRI_HEARTBEAT_TIMEOUT", "inf"), ("SSLMRI_DB", f"postgresql://u:{SECRET}@h:54x2/db"),
    ("SSLMRI_DB", "?password=S3cret"),
])
def test_dashboard_shows_a_bad_environment_value_as_one_error(
    page: str | None, name: str, value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    store = RunStore(url)
    store.end_run(store.start_run("pretrain", {}), "finished")
    monkeypatch.setenv("SSLMRI_DB", url)
    monkeypatch.setenv(name, value)
    at = _open_page(page)
    assert not at.exception, [e.value for e in at.exception]
    errors = [str(e.value) for e in at.error]
    assert len(errors) == 1 and name in errors[0], errors
    assert all("cret" not in str(getattr(e, "value", "")) for e in [*at.caption, *at.error, *at.markdown])


def test_dashboard_sidebar_masks_a_password_in_the_query(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSLMRI_DB", f"postgresql+psycopg://alice@127.0.0.1:1/x?password={SECRET}&connect_timeout=2")
    at = _open_page(None)
    assert not at.exception, [e.value for e in at.exception]
    shown = [str(e.value) for e in [*at.sidebar.caption, *at.caption, *at.error, *at.markdown, *at.info]]
    assert any("password=***" in s for s in shown), shown
    assert all(SECRET not in s for s in shown), shown
