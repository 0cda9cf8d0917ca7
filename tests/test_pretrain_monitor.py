"""Monitoring while pretraining: per-step loss / lr / images/s, per-epoch kNN and online-probe accuracy."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sslmri_core.config import PretrainConfig
from sslmri_core.monitor import knn_accuracy
from sslmri_core.pretrain import pretrain
from sslmri_core.store import RunStore


def test_knn_accuracy_on_separable_and_on_shuffled_labels() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=g) * 5
    labels = torch.arange(3).repeat_interleave(20)
    bank = centres[labels] + torch.randn(60, 16, generator=g)
    queries = centres[labels[::4]] + torch.randn(15, 16, generator=g)
    assert knn_accuracy(bank, labels, queries, labels[::4], 3, k=5) == 1.0
    shuffled = labels[torch.randperm(60, generator=g)]
    assert knn_accuracy(bank, shuffled, queries, labels[::4], 3, k=5) < 0.8


def test_metrics_series_of_a_run(synth_tumor: Path, tmp_path: Path) -> None:
    cfg = PretrainConfig(data=[str(synth_tumor)], model="test_resnet", image_size=64, batch_size=8, epochs=2,
                         precision="fp32", out=str(tmp_path / "runs"))
    store = RunStore(f"sqlite:///{tmp_path / 'runs.db'}")
    result = pretrain(cfg, store, show_progress=False)
    steps = [s for s, _, _ in store.metric_series(result.run_id, "loss")]
    assert steps == list(range(1, 9))  # 32 pool images (test subjects left out), batch 8, 2 epochs
    for key in ("lr", "images_per_s"):
        assert [s for s, _, _ in store.metric_series(result.run_id, key)] == steps
    assert all(v > 0 for _, _, v in store.metric_series(result.run_id, "images_per_s"))
    for key in ("knn_acc", "probe_acc"):  # the random encoder at step 0, then each epoch's end
        series = store.metric_series(result.run_id, key)
        assert [s for s, _, _ in series] == [0, 4, 8], key
        assert all(0.0 <= v <= 1.0 for _, _, v in series)
    assert result.metrics["knn_acc"] == pytest.approx(store.metric_series(result.run_id, "knn_acc")[-1][2])


def test_no_monitoring_without_classes_or_when_turned_off(synth_tumor: Path, tmp_path: Path) -> None:
    cfg = PretrainConfig(data=[str(synth_tumor)], model="test_resnet", image_size=64, batch_size=8, epochs=1,
                         max_steps=1, precision="fp32", monitor=False, out=str(tmp_path / "runs"))
    store = RunStore(f"sqlite:///{tmp_path / 'runs.db'}")
    result = pretrain(cfg, store, show_progress=False)
    assert store.metric_series(result.run_id, "knn_acc") == []
