"""The main job (`make demo`): pretrain once, the three fine-tuning arms, their Grad-CAM maps and embeddings."""

from __future__ import annotations

from pathlib import Path

import pytest

import sslmri_core.data.builtin as builtin
from sslmri_core.config import DemoConfig, SynthConfig
from sslmri_core.config import ARM_SETTINGS
from sslmri_core.evaluation.demo import DEMO_ARMS, run_demo
from sslmri_core.store.writer import RunStore


def test_demo_records_a_pretraining_run_and_every_arm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builtin, "BUILTIN_SETS", {
        "labeled": SynthConfig(task="tumor", subjects=4, slices_per_subject=1, size=48, seed=0),
        "pretrain": SynthConfig(task="tumor", subjects=2, slices_per_subject=1, size=48, seed=1000),
    })
    monkeypatch.setenv("SSLMRI_CACHE", str(tmp_path / "cache"))
    store = RunStore(f"sqlite:///{tmp_path / 'runs.db'}")
    cfg = DemoConfig(model="test_resnet", image_size=48, pretrain_epochs=1, finetune_epochs=1, min_steps=2, batch_size=4)
    results = run_demo(store, out=str(tmp_path / "runs"), cfg=cfg)
    assert all(r.status == "finished" for r in store.list_runs())
    pre, tuned = store.list_runs("pretrain"), store.list_runs("finetune")
    assert len(pre) == 1 and len(tuned) == len(DEMO_ARMS)
    assert [(r.config["init"], r.config["mode"]) for r in tuned] == [ARM_SETTINGS[a] for a in DEMO_ARMS]
    assert [r.parent_run_id for r in tuned] == [pre[0].id, pre[0].id, None]
    assert all("test_balanced_accuracy" in r.metrics for r in results[1:])
    # The dashboard's Scan Explorer and Embeddings pages have something to show for every model.
    assert sorted(r.parent_run_id for r in store.list_runs("gradcam")) == [r.id for r in tuned]

    from sqlalchemy import func, select

    from sslmri_core.store.schema import CamStat, Embedding

    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(CamStat)).scalar_one() > 0
        embedded = set(conn.execute(select(Embedding.run_id).distinct()).scalars())
    assert embedded == {pre[0].id, *(r.id for r in tuned)}
