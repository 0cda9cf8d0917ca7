"""Checkpoints are loaded weights-only, and only from the run's own output folder: a crafted pickle
payload or a redirected path is refused in one line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli import app
from sslmri_core.config import PretrainConfig, to_dict
from sslmri_core.train.checkpoints import CheckpointError, atomic_save, load_checkpoint
from sslmri_core.store.writer import RunStore


class _Payload:
    """Unpickling this calls ``os.mkdir(marker)``: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (os.mkdir, (self.marker,))


def _crafted_checkpoint(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"kind": "pretrain", "encoder": {"w": torch.zeros(2)}, "extra": _Payload(marker)}, path)
    return path


def _pretrain_run(store: RunStore, out_dir: Path, checkpoint: Path, status: str = "finished") -> int:
    run = store.start_run("pretrain", to_dict(PretrainConfig(model="test_resnet", image_size=64, data=["x"])))
    store.update_run(run, out_dir=str(out_dir), checkpoint_path=str(checkpoint))
    store.end_run(run, status)
    return run


def test_a_pickle_payload_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    evil = _crafted_checkpoint(tmp_path / "evil.pt", marker)
    with pytest.raises(CheckpointError, match="refusing to load checkpoint") as info:
        load_checkpoint(evil)
    message = str(info.value)
    assert str(evil) in message and "posix.mkdir" in message and "\n" not in message
    assert not marker.exists()

    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(evil.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="damaged or not a checkpoint"):
        load_checkpoint(damaged)

    good = tmp_path / "good.pt"
    atomic_save({"encoder": {"w": torch.ones(2)}, "step": 3, "order": None, "rng": (3, (1, 2), None)}, good)
    assert load_checkpoint(good)["step"] == 3


def test_finetune_and_resume_refuse_crafted_and_redirected_checkpoints(synth_tumor: Path, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    store = RunStore(db)
    marker = tmp_path / "code-ran"
    out = tmp_path / "runs" / "run-x"
    evil_run = _pretrain_run(store, out, _crafted_checkpoint(out / "checkpoint.pt", marker))
    elsewhere = _crafted_checkpoint(tmp_path / "not-a-run" / "checkpoint.pt", marker)
    redirected = _pretrain_run(store, tmp_path / "runs" / "run-y", elsewhere)
    interrupted = _pretrain_run(store, out, out / "checkpoint.pt", status="interrupted")
    n_runs = len(store.list_runs())

    runner = CliRunner()
    cases = [
        (["finetune", "--data", str(synth_tumor), "--from-run", str(evil_run)], "refusing to load checkpoint"),
        (["finetune", "--data", str(synth_tumor), "--from-run", str(redirected)], "outside the allowed folders"),
        (["pretrain", "--resume", str(interrupted)], "refusing to load checkpoint"),
    ]
    for args, needle in cases:
        result = runner.invoke(app, [*args, "--epochs" if args[0] == "finetune" else "--no-progress",
                                     *(["1"] if args[0] == "finetune" else []), "--db", db])
        assert result.exit_code == 2, (args, result.stderr)
        assert needle in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "Traceback" not in result.stderr
    assert not marker.exists()
    assert len(store.list_runs()) == n_runs  # refused before any run was recorded
