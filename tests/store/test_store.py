"""The run store on SQLite and PostgreSQL: schema from the migrations (and upgrades), NaN kept,
failed / interrupted / silent runs, concurrent writers, ORM never leaks.

Every test that takes ``store`` or ``db_url`` runs twice: on a SQLite file and on a fresh
PostgreSQL database (skipped locally without ``$SSLMRI_TEST_PG_URL``, required in CI).
"""

import math
import multiprocessing
import sqlite3
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.exc import OperationalError

import store_workers
from sslmri_core.store.engine import WRITE_ATTEMPTS, make_engine, read_engine, resolve_db_url, retrying
from sslmri_core.store.migrate import current_revision, head_revision
from sslmri_core.store.schema import Base
from sslmri_core.store.status import RunRecord
from sslmri_core.store.writer import RunStore, StoreError


@pytest.fixture()
def store(db_url: str) -> RunStore:
    return RunStore(db_url)


def _upgrade_to(url: str, revision: str) -> None:
    """A store as an older version of sslmri left it."""
    from alembic import command
    from sslmri_core.store.migrate import alembic_config

    engine = make_engine(url)
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    engine.dispose()


def test_migration_builds_exactly_the_models_schema(store: RunStore) -> None:
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    assert current_revision(store.engine) == head_revision()


def test_reopening_an_existing_store_keeps_its_runs(db_url: str) -> None:
    run_id = RunStore(db_url).start_run("pretrain", {"a": 1})
    assert RunStore(db_url).get_run(run_id).config == {"a": 1}


def test_metric_series_keeps_nan_distinct_from_missing(store: RunStore) -> None:
    run = store.start_run("pretrain", {})
    store.log_metrics(run, {"loss": 1.5}, step=1)
    store.log_metrics(run, {"loss": float("nan")}, step=2)
    series = store.metric_series(run, "loss")
    assert series[0] == (1, None, 1.5)
    assert series[1][0] == 2 and math.isnan(series[1][2])
    assert store.metric_series(run, "missing") == []


def test_failed_run_is_marked_with_its_error(store: RunStore) -> None:
    run = store.start_run("finetune", {}, task="tumor")
    with pytest.raises(RuntimeError):
        with store.track(run):
            raise RuntimeError("out of memory")
    record = store.get_run(run)
    assert record.status == "failed" and "out of memory" in (record.error or "")
    assert record.ended_at is not None


def test_interrupted_and_finished(store: RunStore) -> None:
    a, b = store.start_run("pretrain", {}), store.start_run("pretrain", {})
    with pytest.raises(KeyboardInterrupt):
        with store.track(a):
            raise KeyboardInterrupt
    with store.track(b):
        pass
    assert [store.get_run(a).status, store.get_run(b).status] == ["interrupted", "finished"]


def test_records_are_plain_dataclasses_with_provenance(store: RunStore) -> None:
    run = store.start_run("pretrain", {"model": "x"}, device="cpu")
    record = store.list_runs()[0]
    assert isinstance(record, RunRecord) and record.id == run
    assert record.host and record.device == "cpu" and record.status == "running"
    assert record.heartbeat_at is not None and record.heartbeat_at.tzinfo is not None


def test_confusion_and_predictions_round_trip(store: RunStore) -> None:
    from sqlalchemy import select

    from sslmri_core.store.schema import Confusion, Prediction

    run = store.start_run("finetune", {})
    store.log_confusion(run, "test", "slice", ["a", "b"], [[3, 1], [0, 4]])
    store.log_predictions(run, [{"split": "test", "scan": "x.png", "subject": "sub-1", "true_label": "a",
                                 "pred_label": "b", "confidence": 0.7, "probs": [0.3, 0.7]}])
    with store.engine.connect() as conn:
        assert conn.execute(select(Confusion.matrix)).scalar_one() == [[3, 1], [0, 4]]
        assert conn.execute(select(Prediction.probs)).scalar_one() == [0.3, 0.7]



def test_results_replace_by_name_and_embeddings_replace_by_method(store: RunStore) -> None:
    from sqlalchemy import func, select

    from sslmri_core.store.schema import Embedding

    run = store.start_run("finetune", {})
    store.log_result(run, "intervals", {"test_accuracy": [0.5, 0.9]})
    store.log_result(run, "intervals", {"test_accuracy": [0.6, 0.8]})
    assert store.results(run) == {"intervals": {"test_accuracy": [0.6, 0.8]}}
    point = {"scan": "a.png", "subject": "s1", "label": "a", "split": "test", "source": "x", "x": 0.0, "y": 1.0}
    store.log_embeddings(run, "umap", [point, {**point, "scan": "b.png"}])
    store.log_embeddings(run, "umap", [point])
    store.log_embeddings(run, "tsne", [point])
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Embedding)).scalar_one() == 2

def test_unknown_run_and_bad_url_are_clear_errors(store: RunStore) -> None:
    with pytest.raises(StoreError, match="no run with id 42"):
        store.get_run(42)
    with pytest.raises(StoreError, match="cannot open run store") as info:
        RunStore("postgresql+psycopg://nobody:s3cret@127.0.0.1:1/none")
    message = str(info.value)
    assert "--db" in message and "s3cret" not in message and "\n" not in message


def test_url_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSLMRI_DB", raising=False)
    assert resolve_db_url(None) == "sqlite:///runs.db"
    monkeypatch.setenv("SSLMRI_DB", "sqlite:////tmp/x.db")
    assert resolve_db_url(None) == "sqlite:////tmp/x.db"
    assert resolve_db_url("other.db") == "sqlite:///other.db"


def test_status_is_guarded_by_a_constraint(store: RunStore) -> None:
    from sqlalchemy.exc import IntegrityError

    run = store.start_run("pretrain", {})
    with pytest.raises(IntegrityError):
        store.update_run(run, status="exploded")


def test_a_store_made_by_the_first_schema_is_upgraded(db_url: str) -> None:
    from sqlalchemy import inspect

    _upgrade_to(db_url, "0001")
    engine = make_engine(db_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO runs (kind, status, created_at, config) VALUES ('pretrain', 'finished', '2026-01-01', '{}')")
    assert "datasets" not in inspect(engine).get_table_names()
    engine.dispose()
    store = RunStore(db_url)
    assert {"datasets", "manifest_rows", "split_assignments", "audits"} <= set(inspect(store.engine).get_table_names())
    assert store.get_run(1).status == "finished"
    assert current_revision(store.engine) == head_revision()


def test_a_store_at_0002_with_rows_is_upgraded_to_head(db_url: str) -> None:
    """Runs, metrics and data sets written by the previous schema survive; an old 'running' run reads as interrupted."""
    from sqlalchemy import inspect

    _upgrade_to(db_url, "0002")
    engine = make_engine(db_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO runs (kind, status, created_at, started_at, config, out_dir) VALUES "
            "('pretrain', 'finished', '2026-01-01 10:00:00', '2026-01-01 10:00:00', '{\"model\": \"m\"}', '/o/1'), "
            "('pretrain', 'running', '2026-01-02 10:00:00', '2026-01-02 10:00:00', '{}', '/o/2')")
        conn.exec_driver_sql("INSERT INTO metrics (run_id, key, step, epoch, value, is_nan) VALUES "
                             "(1, 'loss', 1, 0, 2.5, false), (1, 'loss', 2, 0, NULL, true)")
        conn.exec_driver_sql(
            "INSERT INTO datasets (fingerprint, root, created_at, n_files, n_usable, n_images, classes, split_level, "
            "summary) VALUES ('f1', '/d', '2026-01-01', 3, 2, 2, '{\"a\": 2}', 'subject', '{}')")
    assert current_revision(engine) == "0002"
    assert "heartbeat_at" not in {c["name"] for c in inspect(engine).get_columns("runs")}
    engine.dispose()

    store = RunStore(db_url)
    assert current_revision(store.engine) == head_revision() != "0002"
    assert "heartbeat_at" in {c["name"] for c in inspect(store.engine).get_columns("runs")}
    first, second = store.list_runs()
    assert (first.status, first.config, first.out_dir, first.heartbeat_at) == ("finished", {"model": "m"}, "/o/1", None)
    loss = store.metric_series(1, "loss")
    assert loss[0] == (1, 0, 2.5) and math.isnan(loss[1][2])
    assert second.status == "interrupted" and "no heartbeat" in (second.error or "")  # silent since 2026-01-02
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_silent_running_runs_read_as_interrupted(store: RunStore, db_url: str) -> None:
    """Heartbeat semantics for writers (RunStore) and readers (the dashboard's queries) alike."""
    from sslmri_core.store import queries

    alive, dead, done = (store.start_run("pretrain", {}) for _ in range(3))
    store.end_run(done, "finished")
    long_ago = datetime.now(timezone.utc) - timedelta(hours=1)
    store.update_run(dead, heartbeat_at=long_ago)
    status = {r.id: r.status for r in store.list_runs()}
    assert status == {alive: "running", dead: "interrupted", done: "finished"}
    assert "no heartbeat since" in (store.get_run(dead).error or "")

    engine = read_engine(db_url)
    frame = queries.runs_frame(engine).set_index("id")
    assert frame.loc[dead, "status"] == "interrupted" and "no heartbeat" in frame.loc[dead, "error"]
    assert frame.loc[alive, "status"] == "running"
    assert list(queries.runs_frame(engine, status="interrupted")["id"]) == [dead]
    counts = queries.counts_by_kind_status(engine).set_index("kind")
    assert (counts.loc["pretrain", "running"], counts.loc["pretrain", "interrupted"]) == (1, 1)
    assert queries.run_detail(engine, dead).run.status == "interrupted"

    store.heartbeat(dead)  # it was alive after all (e.g. a laptop waking up): running again
    assert store.get_run(dead).status == "running"
    store.update_run(dead, heartbeat_at=long_ago)
    assert store.mark_stale_interrupted() == 1  # writers store what readers show
    record = store.get_run(dead)
    assert record.status == "interrupted" and record.ended_at is not None
    assert store.mark_stale_interrupted() == 0

    assert store.reopen_run(dead)  # --resume takes it back
    assert store.get_run(dead).status == "running" and store.get_run(dead).error is None
    assert not store.reopen_run(dead) and not store.reopen_run(alive) and not store.reopen_run(done)


def test_heartbeat_timeout_is_configurable(store: RunStore, monkeypatch: pytest.MonkeyPatch) -> None:
    run = store.start_run("pretrain", {})
    store.update_run(run, heartbeat_at=datetime.now(timezone.utc) - timedelta(seconds=30))
    assert store.get_run(run).status == "running"  # default timeout: 5 minutes
    monkeypatch.setenv("SSLMRI_HEARTBEAT_TIMEOUT", "10")
    assert store.get_run(run).status == "interrupted"
    monkeypatch.setenv("SSLMRI_HEARTBEAT_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="SSLMRI_HEARTBEAT_TIMEOUT"):
        store.get_run(run)


def test_truncate_metrics_drops_points_after_a_step(store: RunStore) -> None:
    run = store.start_run("pretrain", {})
    for step in range(1, 7):
        store.log_metrics(run, {"loss": float(step)}, step=step)
    store.log_metrics(run, {"best": 1.0})  # no step: never dropped
    assert store.truncate_metrics(run, 4) == 2
    assert [s for s, _, _ in store.metric_series(run, "loss")] == [1, 2, 3, 4]
    assert store.metric_series(run, "best") == [(None, None, 1.0)]


def test_dashboard_queries_read_and_cannot_write(store: RunStore, db_url: str) -> None:
    from sqlalchemy import insert

    from sslmri_core.store import queries
    from sslmri_core.store.schema import Run

    run = store.start_run("finetune", {"model": "m", "init": "scratch", "mode": "full", "label_fraction": 0.5},
                          task="tumor")
    store.log_metrics(run, {"test_accuracy": 0.75, "test_macro_f1": 0.5})
    store.end_run(run, "finished")
    engine = read_engine(db_url)
    frame = queries.runs_frame(engine)
    assert list(frame["id"]) == [run] and frame.loc[0, "test_accuracy"] == 0.75 and frame.loc[0, "model"] == "m"
    assert queries.store_status(db_url).n_runs == 1
    with pytest.raises(Exception, match="(?i)read-only|readonly"):
        with engine.begin() as conn:
            conn.execute(insert(Run).values(kind="pretrain", status="running", config={},
                                            created_at=datetime.now(timezone.utc)))


def test_writes_are_retried_while_the_database_is_locked(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    sleeps: list[float] = []
    monkeypatch.setattr("sslmri_core.store.engine.time.sleep", sleeps.append)

    @retrying
    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise OperationalError("INSERT INTO metrics ...", {}, sqlite3.OperationalError("database is locked"))
        return "written"

    assert flaky() == "written" and len(calls) == 3

    @retrying
    def locked_for_good() -> None:
        calls.append(1)
        raise OperationalError("INSERT", {}, sqlite3.OperationalError("database is locked"))

    calls.clear()
    sleeps.clear()
    with pytest.raises(OperationalError):
        locked_for_good()
    assert len(calls) == WRITE_ATTEMPTS and len(sleeps) == WRITE_ATTEMPTS - 1  # bounded
    assert 0.05 <= sleeps[0] <= 0.1 and sleeps[1] >= 0.1 and max(sleeps) <= 4.0  # backoff grows, capped

    @retrying
    def broken() -> None:
        calls.append(1)
        raise OperationalError("INSERT", {}, sqlite3.OperationalError("no such table: metrics"))

    calls.clear()
    with pytest.raises(OperationalError):
        broken()
    assert len(calls) == 1  # only a lock is worth waiting for


WRITE_SECONDS = 3.0


def test_two_writer_processes_and_a_reader_lose_no_row(
    store: RunStore, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes write metrics in many small transactions while the dashboard's queries read."""
    import queue
    import time
    import types

    from sqlalchemy import func, select

    from sslmri_core.store.schema import Metric, Run

    run = store.start_run("pretrain", {})
    # spawn: no forked copy of the test process (torch threads, open engines). A bare __main__ keeps
    # the children from re-running whatever script an earlier test ran as __main__ (Streamlit's AppTest).
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=store_workers.writer, args=(db_url, run, key, WRITE_SECONDS, start, results))
             for key in ("w1", "w2")]
    procs.append(ctx.Process(target=store_workers.reader, args=(db_url, run, WRITE_SECONDS, start, results)))
    for proc in procs:
        proc.start()
    start.set()
    reports: dict[str, dict] = {}
    deadline = time.monotonic() + 180
    while len(reports) < len(procs):
        try:
            report = results.get(timeout=0.5)
            reports[report["who"]] = report
        except queue.Empty:
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            assert not dead and time.monotonic() < deadline, f"a worker died (exit codes {dead}) or hung"
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    assert all(not r["errors"] for r in reports.values()), reports
    with store.engine.connect() as conn:
        for key in ("w1", "w2"):
            steps = conn.execute(select(Metric.step).where(Metric.run_id == run, Metric.key == key)).scalars().all()
            assert sorted(steps) == list(range(reports[key]["n"]))  # every write is there, once
            assert reports[key]["n"] > 25
        n_runs = conn.execute(select(func.count()).select_from(Run)).scalar_one()
    assert n_runs == 1 + reports["w1"]["runs"] + reports["w2"]["runs"]
    assert reports["reader"]["n"] > 0


def test_manifest_is_stored_once_per_fingerprint(store: RunStore) -> None:
    from sslmri_core.data.manifest import Manifest, ManifestRow

    row = ManifestRow(path="/d/a/x.png", rel_path="a/x.png", label="a", folder_label="a", subject="sub-1",
                      given_split=None, content_hash="abc", file_size=10, width=8, height=8, mode="L", bit_depth=8)
    bad = ManifestRow(path="/d/a/y.png", rel_path="a/y.png", label="", folder_label="a", subject=None,
                      given_split=None, content_hash=None, file_size=None, width=None, height=None, mode=None,
                      bit_depth=None, status="unusable", reason="empty file (0 bytes)")
    manifest = Manifest("/d", [row, bad], "bids")
    first = store.save_manifest(manifest)
    assert store.save_manifest(manifest) == first
    run = store.start_run("finetune", {})
    store.log_split(run, [{"key": row.key, "subject": "sub-1", "split": "train", "labeled": True}])
    assert store.split_of(run) == {"/d/a/x.png": "train"}
