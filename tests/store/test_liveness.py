"""A run records its owner (host and pid): killed with ``kill -9`` on this host it reads as
``interrupted`` at once; on another host the heartbeat rule alone decides; stores at 0005 upgrade."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from sslmri_core.store import status as run_status
from sslmri_core.store.engine import make_engine
from sslmri_core.store.lifecycle import open_run
from sslmri_core.store.migrate import current_revision, head_revision
from sslmri_core.store.writer import RunStore
from tests.conftest import ROOT

# A command's process: opens a run, says its id, then works until killed.
CHILD = """
import sys, time
from sslmri_core.store.lifecycle import open_run
from sslmri_core.store.writer import RunStore
with open_run(RunStore(sys.argv[1]), "pretrain", {}, out=sys.argv[2]) as run:
    print(run.run_id, flush=True)
    time.sleep(120)
"""


@pytest.fixture(autouse=True)
def _default_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """The 5-minute default heartbeat timeout: a killed run must not wait for it."""
    monkeypatch.delenv("SSLMRI_HEARTBEAT_TIMEOUT", raising=False)


@pytest.fixture()
def killed(tmp_path: Path) -> Iterator[tuple[RunStore, int, int]]:
    """A SQLite store and the id of a run whose process was killed with ``kill -9`` (and its pid)."""
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    store = RunStore(db)
    proc = subprocess.Popen([sys.executable, "-c", CHILD, db, str(tmp_path / "runs")], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        run_id = int(proc.stdout.readline())
        assert store.get_run(run_id).status == "running"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)  # the shell that started a command reaps it too
        yield store, run_id, proc.pid
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_run_killed_on_this_host_reads_interrupted_at_once_and_can_be_resumed(
    killed: tuple[RunStore, int, int],
) -> None:
    store, run_id, pid = killed
    record = store.get_run(run_id)
    assert (record.host, record.pid) == (socket.gethostname(), pid)
    assert record.status == "interrupted" and f"process {pid} on {record.host} is gone" in (record.error or "")
    assert [r.status for r in store.list_runs()] == ["interrupted"]
    assert store.reopen_run(run_id)  # pretrain --resume right after the kill
    record = store.get_run(run_id)
    assert (record.status, record.pid, record.error) == ("running", os.getpid(), None)
    assert not store.reopen_run(run_id)  # now this process owns it: alive


def test_writers_store_the_killed_run_as_interrupted(killed: tuple[RunStore, int, int]) -> None:
    store, run_id, pid = killed
    assert store.mark_stale_interrupted() == 1
    with store.engine.connect() as conn:
        stored = conn.exec_driver_sql(f"SELECT status, error FROM runs WHERE id = {run_id}").one()
    assert stored[0] == "interrupted" and f"process {pid}" in stored[1]
    assert store.get_run(run_id).ended_at is not None
    assert store.mark_stale_interrupted() == 0


def test_a_dead_pid_on_another_host_waits_for_the_heartbeat(tmp_path: Path) -> None:
    store = RunStore(f"sqlite:///{tmp_path / 'runs.db'}")
    run_id = store.start_run("pretrain", {})
    store.update_run(run_id, host="another-host", pid=_dead_pid())
    assert store.get_run(run_id).status == "running"  # that pid may live over there
    assert not store.reopen_run(run_id) and store.mark_stale_interrupted() == 0
    store.update_run(run_id, heartbeat_at=datetime.now(timezone.utc) - timedelta(minutes=10))
    record = store.get_run(run_id)
    assert record.status == "interrupted" and "no heartbeat since" in (record.error or "")


def test_a_run_without_a_pid_keeps_the_heartbeat_rule(tmp_path: Path) -> None:
    store = RunStore(f"sqlite:///{tmp_path / 'runs.db'}")
    run_id = store.start_run("pretrain", {})
    store.update_run(run_id, pid=None)  # a run recorded before revision 0006
    assert store.get_run(run_id).status == "running" and not store.reopen_run(run_id)


def test_an_adopted_run_records_its_new_owner(tmp_path: Path) -> None:
    """A finished experiment taken up again (``open_run(run_id=...)``) is owned by the process that runs it."""
    store = RunStore(f"sqlite:///{tmp_path / 'runs.db'}")
    run_id = store.start_run("experiment", {})
    store.update_run(run_id, pid=_dead_pid(), status="running")
    assert store.get_run(run_id).status == "interrupted"
    with open_run(store, "experiment", {}, run_id=run_id):
        record = store.get_run(run_id)
        assert (record.status, record.pid, record.host) == ("running", os.getpid(), socket.gethostname())


def test_pid_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    assert run_status.pid_alive(os.getpid()) and not run_status.pid_alive(_dead_pid())
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while Path(f"/proc/{zombie.pid}").exists() and run_status.pid_alive(zombie.pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not run_status.pid_alive(zombie.pid)  # exited, not yet reaped by its parent
    zombie.wait()

    def forbidden(pid: int, sig: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(run_status.os, "kill", forbidden)
    assert run_status.pid_alive(12345)  # another user's process: alive


def test_a_store_at_0005_is_upgraded_with_the_pid_column(db_url: str) -> None:
    from alembic import command
    from sqlalchemy import inspect

    from sslmri_core.store.migrate import alembic_config

    engine = make_engine(db_url)
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0005")
        conn.exec_driver_sql(
            "INSERT INTO runs (kind, status, created_at, started_at, config, host) VALUES "
            f"('pretrain', 'running', '2026-01-02 10:00:00', '2026-01-02 10:00:00', '{{}}', '{socket.gethostname()}')")
    assert "pid" not in {c["name"] for c in inspect(engine).get_columns("runs")}
    engine.dispose()
    store = RunStore(db_url)
    assert current_revision(store.engine) == head_revision() != "0005"
    assert "pid" in {c["name"] for c in inspect(store.engine).get_columns("runs")}
    old = store.get_run(1)
    assert old.pid is None and old.status == "interrupted" and "no heartbeat" in (old.error or "")
    new = store.get_run(store.start_run("pretrain", {}))
    assert (new.pid, new.status) == (os.getpid(), "running")
