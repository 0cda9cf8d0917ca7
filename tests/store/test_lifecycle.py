"""``open_run``: a run is ``running`` only inside its block, fails or finishes with it, and its
heartbeat is beaten by a thread however long the block's own work takes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sslmri_core.errors import UsageError
from sslmri_core.store.lifecycle import open_run
from sslmri_core.store.writer import RunStore


def test_the_heartbeat_thread_beats_while_the_block_is_busy(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSLMRI_HEARTBEAT_INTERVAL", "0.05")
    store = RunStore(db_url)
    with open_run(store, "gradcam", {}, out=tmp_path / "runs") as run:
        first = store.get_run(run.run_id).heartbeat_at
        time.sleep(0.5)  # one long step: no code of the command's beats the heartbeat
        later = store.get_run(run.run_id).heartbeat_at
        assert first is not None and later is not None and later > first
        folder = (tmp_path / "runs").resolve() / f"run-{run.run_id}"
        assert store.get_run(run.run_id).out_dir == str(run.folder) == str(folder)
    record = store.get_run(run.run_id)
    assert record.status == "finished" and record.ended_at is not None


def test_a_failure_inside_the_block_marks_the_run_failed(db_url: str, tmp_path: Path) -> None:
    store = RunStore(db_url)
    with pytest.raises(RuntimeError, match="no space left"), open_run(store, "evaluate", {}, out=tmp_path) as run:
        raise RuntimeError("no space left on device")
    record = store.get_run(run.run_id)
    assert record.status == "failed" and "no space left" in (record.error or "")


def test_resume_takes_a_stopped_run_back_and_refuses_a_finished_one(db_url: str, tmp_path: Path) -> None:
    store = RunStore(db_url)
    stopped = store.start_run("pretrain", {})
    store.end_run(stopped, "interrupted", "stopped by the test")
    with open_run(store, "pretrain", {}, resume=stopped, out_dir=tmp_path / "run-x") as run:
        assert run.run_id == stopped and store.get_run(stopped).status == "running"
        assert run.folder == tmp_path / "run-x"
    assert store.get_run(stopped).status == "finished"
    with pytest.raises(UsageError, match="another process"), open_run(store, "pretrain", {}, resume=stopped):
        pass
    assert store.get_run(stopped).status == "finished"  # a refused resume changes nothing
