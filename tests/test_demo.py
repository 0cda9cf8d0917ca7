"""The main job (`make demo`): pretrain once, then the three fine-tuning arms, all recorded."""

from __future__ import annotations

from pathlib import Path

import pytest

import sslmri_core.builtin as builtin
from sslmri_core.config import DemoConfig, SynthConfig
from sslmri_core.demo import ARMS, run_demo
from sslmri_core.store import RunStore


def test_demo_records_a_pretraining_run_and_every_arm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builtin, "BUILTIN_SETS", {
        "labeled": SynthConfig(task="tumor", subjects=4, slices_per_subject=1, size=48, seed=0),
        "pretrain": SynthConfig(task="tumor", subjects=2, slices_per_subject=1, size=48, seed=1000),
    })
    monkeypatch.setenv("SSLMRI_CACHE", str(tmp_path / "cache"))
    store = RunStore(f"sqlite:///{tmp_path / 'runs.db'}")
    cfg = DemoConfig(model="test_resnet", image_size=48, pretrain_epochs=1, finetune_epochs=1, batch_size=4)
    results = run_demo(store, out=str(tmp_path / "runs"), cfg=cfg)
    runs = store.list_runs()
    assert [r.kind for r in runs] == ["pretrain"] + ["finetune"] * len(ARMS)
    assert all(r.status == "finished" for r in runs)
    assert [(r.config["init"], r.config["mode"]) for r in runs[1:]] == list(ARMS)
    assert [r.parent_run_id for r in runs[1:]] == [runs[0].id, runs[0].id, None]
    assert all("test_balanced_accuracy" in r.metrics for r in results[1:])
