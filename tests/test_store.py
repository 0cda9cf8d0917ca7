"""The run store: schema from the migration, NaN kept, failed runs marked, ORM never leaks."""

import math
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from sslmri_core.store import Base, RunRecord, RunStore, StoreError, resolve_db_url


@pytest.fixture()
def store(tmp_path: Path) -> RunStore:
    return RunStore(f"sqlite:///{tmp_path / 'runs.db'}")


def test_migration_builds_exactly_the_models_schema(store: RunStore) -> None:
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_reopening_an_existing_store_keeps_its_runs(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    run_id = RunStore(url).start_run("pretrain", {"a": 1})
    assert RunStore(url).get_run(run_id).config == {"a": 1}


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


def test_confusion_and_predictions_round_trip(store: RunStore) -> None:
    from sqlalchemy import select

    from sslmri_core.store import Confusion, Prediction

    run = store.start_run("finetune", {})
    store.log_confusion(run, "test", "slice", ["a", "b"], [[3, 1], [0, 4]])
    store.log_predictions(run, [{"split": "test", "scan": "x.png", "subject": "sub-1", "true_label": "a",
                                 "pred_label": "b", "confidence": 0.7, "probs": [0.3, 0.7]}])
    with store.engine.connect() as conn:
        assert conn.execute(select(Confusion.matrix)).scalar_one() == [[3, 1], [0, 4]]
        assert conn.execute(select(Prediction.probs)).scalar_one() == [0.3, 0.7]


def test_unknown_run_and_bad_url_are_clear_errors(store: RunStore) -> None:
    with pytest.raises(StoreError, match="no run with id 42"):
        store.get_run(42)
    with pytest.raises(StoreError, match="cannot open run store"):
        RunStore("postgresql+psycopg://nobody@127.0.0.1:1/none")


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


def test_a_store_made_by_the_first_schema_is_upgraded(tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import inspect

    from sslmri_core.store import make_engine

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__import__("sslmri_core").__file__).parent / "migrations"))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO runs (kind, status, created_at, config) VALUES ('pretrain', 'finished', '2026-01-01', '{}')")
    assert "datasets" not in inspect(engine).get_table_names()
    store = RunStore(url)
    assert {"datasets", "manifest_rows", "split_assignments", "audits"} <= set(inspect(store.engine).get_table_names())
    assert store.get_run(1).status == "finished"


def test_manifest_is_stored_once_per_fingerprint(store: RunStore, tmp_path: Path) -> None:
    from sslmri_core.manifest import Manifest, ManifestRow

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
