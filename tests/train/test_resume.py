"""Crash safety: a killed run reads as interrupted (at once on its host), SIGTERM checkpoints at a step
boundary, and ``pretrain --resume`` continues the same run to the same result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli import app
from sslmri_core.config import PretrainConfig, SynthConfig
from sslmri_core.train.pretrain import RunInterrupted, pretrain, resume_pretrain
from sslmri_core.train.checkpoints import load_checkpoint
from sslmri_core.store.writer import RunStore
from tests.conftest import ROOT

TINY = ["--model", "test_resnet", "--image-size", "64", "--batch-size", "8", "--precision", "fp32"]


@pytest.fixture(scope="module")
def bigger_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """96 slices: 12 steps per epoch at batch 8, time enough to kill a run in its second epoch."""
    from sslmri_core.data.synth import generate

    out = tmp_path_factory.mktemp("synth_resume")
    generate(out, SynthConfig(task="tumor", subjects=6, slices_per_subject=4, size=64, seed=3))
    return out / "tumor"


def _steps(store: RunStore, run_id: int, key: str = "loss") -> list[int]:
    return [int(s) for s, _, _ in store.metric_series(run_id, key)]


def _param(store: RunStore, run_id: int, key: str) -> str | None:
    from sqlalchemy import select

    from sslmri_core.store.schema import Param

    with store.engine.connect() as conn:
        return conn.execute(select(Param.value).where(Param.run_id == run_id, Param.key == key)).scalar_one_or_none()


def test_killed_run_reads_interrupted_and_resumes_to_completion(
    bigger_set: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, out = f"sqlite:///{tmp_path / 'runs.db'}", tmp_path / "runs"
    store = RunStore(db)
    env = {**os.environ, "SSLMRI_HEARTBEAT_INTERVAL": "0.2", "SSLMRI_DB": db}
    proc = subprocess.Popen(
        [sys.executable, "cli.py", "pretrain", "--data", str(bigger_set), *TINY, "--epochs", "3", "--include-test",
         "--db", db, "--out", str(out), "--no-progress"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 240
        while True:  # wait for the first epoch's checkpoint and a few steps of the second epoch
            assert proc.poll() is None, f"pretraining ended before it could be killed: {proc.stderr.read()!r}"
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            runs = store.list_runs()
            if runs and runs[0].checkpoint_path:
                epoch_ends = _steps(store, runs[0].id, "epoch_loss")
                if epoch_ends and len(_steps(store, runs[0].id)) >= epoch_ends[0] + 2:
                    break
            time.sleep(0.02)
        run_id, per_epoch = runs[0].id, epoch_ends[0]
        assert store.get_run(run_id).status == "running"
        proc.send_signal(signal.SIGKILL)  # kill -9: no handler, no cleanup, no final status
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    logged = _steps(store, run_id)
    assert len(logged) > per_epoch and Path(store.get_run(run_id).checkpoint_path).is_file()
    monkeypatch.delenv("SSLMRI_HEARTBEAT_TIMEOUT", raising=False)
    record = store.get_run(run_id)  # its process on this host is gone: at once, not after the 5-minute default
    assert record.status == "interrupted" and f"process {proc.pid}" in (record.error or "")
    listed = CliRunner().invoke(app, ["runs", "list", "--db", db, "--json"])
    assert listed.exit_code == 0 and json.loads(listed.stdout.splitlines()[-1])[0]["status"] == "interrupted"

    result = CliRunner().invoke(app, ["pretrain", "--resume", str(run_id), "--db", db, "--no-progress", "--json"])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["run_id"] == run_id and summary["status"] == "finished"
    record = store.get_run(run_id)
    assert record.status == "finished" and record.error is None
    total = 3 * per_epoch
    assert _steps(store, run_id) == list(range(1, total + 1))  # no gap, no duplicate
    assert _steps(store, run_id, "epoch_loss") == [per_epoch, 2 * per_epoch, 3 * per_epoch]
    assert summary["metrics"]["steps"] == total
    resumed_from = int(_param(store, run_id, "resumed_from_step"))
    assert resumed_from % per_epoch == 0 and per_epoch <= resumed_from < len(logged)  # the steps after it ran twice
    state = load_checkpoint(record.checkpoint_path)
    assert state["step"] == total and state["run_id"] == run_id

    again = CliRunner().invoke(app, ["pretrain", "--resume", str(run_id), "--db", db])
    assert again.exit_code == 2 and "already finished" in again.stderr


def test_sigterm_checkpoints_mid_epoch_and_resuming_reproduces_the_run(synth_tumor: Path, tmp_path: Path) -> None:
    """fp32 on a small set: stopped by SIGTERM mid-epoch then resumed == never stopped (losses and weights)."""
    cfg = PretrainConfig(data=[str(synth_tumor)], model="test_resnet", image_size=64, batch_size=8, epochs=3,
                         precision="fp32", out=str(tmp_path / "runs"))
    straight = RunStore(f"sqlite:///{tmp_path / 'a.db'}")
    reference = pretrain(cfg, straight, show_progress=False)
    ref_losses = [v for _, _, v in straight.metric_series(reference.run_id, "loss")]
    per_epoch = _steps(straight, reference.run_id, "epoch_loss")[0]
    stop_after = per_epoch + 1  # one step into the second epoch
    assert per_epoch >= 2 and len(ref_losses) == 3 * per_epoch

    store = RunStore(f"sqlite:///{tmp_path / 'b.db'}")
    real_log = store.log_metrics

    def log_and_signal(run_id: int, values: dict, *, step: int | None = None, epoch: int | None = None) -> None:
        real_log(run_id, values, step=step, epoch=epoch)
        if step == stop_after and "loss" in values:
            os.kill(os.getpid(), signal.SIGTERM)  # as `kill PID` would; the handler defers it to the step boundary

    store.log_metrics = log_and_signal  # type: ignore[method-assign]
    with pytest.raises(RunInterrupted, match=f"SIGTERM at step {stop_after}"):
        pretrain(cfg, store, show_progress=False)
    store.log_metrics = real_log  # type: ignore[method-assign]
    (run,) = store.list_runs()
    assert run.status == "interrupted" and "--resume" in (run.error or "")
    state = load_checkpoint(run.checkpoint_path)
    assert state["step"] == stop_after and state["position"]["epoch"] == 1 and state["position"]["batch"] == 1
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler removed again

    resumed = resume_pretrain(run.id, store, show_progress=False)
    assert resumed.run_id == run.id and store.get_run(run.id).status == "finished"
    assert _steps(store, run.id) == list(range(1, 3 * per_epoch + 1))
    losses = [v for _, _, v in store.metric_series(run.id, "loss")]
    assert losses == pytest.approx(ref_losses, rel=1e-4, abs=1e-5)
    epoch_losses = [v for _, _, v in store.metric_series(run.id, "epoch_loss")]
    assert epoch_losses == pytest.approx([v for _, _, v in straight.metric_series(reference.run_id, "epoch_loss")],
                                         rel=1e-4)
    for key in ("knn_acc", "probe_acc", "lr"):  # the monitoring (and its online probe) resumes too
        assert [v for _, _, v in store.metric_series(run.id, key)] == pytest.approx(
            [v for _, _, v in straight.metric_series(reference.run_id, key)], rel=1e-4, abs=1e-5), key
    a, b = load_checkpoint(reference.checkpoint)["encoder"], load_checkpoint(resumed.checkpoint)["encoder"]
    for name, tensor in a.items():
        if tensor.is_floating_point():
            torch.testing.assert_close(b[name], tensor, rtol=1e-4, atol=1e-5)


def test_nan_loss_fails_the_run_and_keeps_the_last_good_checkpoint(
    synth_tumor: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sslmri_core.train.pretrain as pretrain_module
    from sslmri_core.train.losses import nt_xent

    cfg = PretrainConfig(data=[str(synth_tumor)], model="test_resnet", image_size=64, batch_size=8, epochs=3,
                         precision="fp32", monitor=False, out=str(tmp_path / "runs"))
    calls = {"n": 0}

    def nan_in_second_epoch(*args: object, **kwargs: object) -> torch.Tensor:
        calls["n"] += 1
        loss = nt_xent(*args, **kwargs)  # type: ignore[arg-type]
        return loss * float("nan") if calls["n"] == 5 else loss  # 3 or 4 steps per epoch: call 5 is in epoch 2

    monkeypatch.setattr(pretrain_module, "nt_xent", nan_in_second_epoch)
    store = RunStore(f"sqlite:///{tmp_path / 'runs.db'}")
    with pytest.raises(pretrain_module.NonFiniteLossError, match="loss became nan at step 4"):
        pretrain(cfg, store, show_progress=False)
    (run,) = store.list_runs()
    assert run.status == "failed" and "loss became nan" in (run.error or "") and "last good checkpoint" in run.error
    per_epoch = int(store.params(run.id)["n_images"]) // 8
    assert per_epoch in (3, 4)
    state = load_checkpoint(run.checkpoint_path)
    # the end of epoch 1, written before the NaN
    assert state["step"] == per_epoch and state["position"]["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in state["encoder"].values() if t.is_floating_point())
    monkeypatch.setattr(pretrain_module, "nt_xent", nt_xent)
    assert resume_pretrain(run.id, store, show_progress=False).status == "finished"  # a failed run can go on
    assert _steps(store, run.id) == list(range(1, 3 * per_epoch + 1))


def test_a_failure_while_setting_up_pretraining_marks_the_run_failed(
    synth_tumor: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failing store write between the run's start and its first step (the split rows) ends it ``failed``."""
    cfg = PretrainConfig(data=[str(synth_tumor)], model="test_resnet", image_size=64, batch_size=8, epochs=1,
                         precision="fp32", out=str(tmp_path / "runs"))
    store = RunStore(f"sqlite:///{tmp_path / 'runs.db'}")

    def lost_connection(*_args: object, **_kwargs: object) -> None:
        raise ConnectionError("server closed the connection")

    monkeypatch.setattr(store, "log_split", lost_connection)
    with pytest.raises(ConnectionError):
        pretrain(cfg, store, show_progress=False)
    (run,) = store.list_runs()
    assert run.status == "failed" and "server closed" in (run.error or "")
