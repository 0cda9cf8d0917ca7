"""Monitoring while pretraining: per-step loss / lr / images/s, per-epoch kNN and online-probe accuracy."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sslmri_core.config import PretrainConfig
from sslmri_core.train.monitor import knn_accuracy
from sslmri_core.train.pretrain import pretrain
from sslmri_core.store.writer import RunStore


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
    per_epoch = int(store.params(result.run_id)["n_images"]) // 8  # the pool (test groups left out), batch 8
    assert per_epoch >= 3 and steps == list(range(1, 2 * per_epoch + 1))  # 2 epochs
    for key in ("lr", "images_per_s"):
        assert [s for s, _, _ in store.metric_series(result.run_id, key)] == steps
    assert all(v > 0 for _, _, v in store.metric_series(result.run_id, "images_per_s"))
    reference = _reference_quality(cfg, result.checkpoint)
    for key in ("knn_acc", "probe_acc"):  # the random encoder at step 0, then each epoch's end
        series = store.metric_series(result.run_id, key)
        assert [s for s, _, _ in series] == [0, per_epoch, 2 * per_epoch], key
        # Each value is a share of the val queries, and the last one is what the final weights score.
        assert all(round(v * reference["n_queries"], 4) % 1 == 0 for _, _, v in series), (key, series)
        assert series[-1][2] == pytest.approx(reference[key], abs=1e-6), key
    assert result.metrics["knn_acc"] == pytest.approx(store.metric_series(result.run_id, "knn_acc")[-1][2])


def _reference_quality(cfg: PretrainConfig, checkpoint: str) -> dict[str, float]:
    """kNN and probe accuracy recomputed from the run's final checkpoint: the pool's train images are the
    bank, the val images (never the train ones, never the left-out test ones) are scored."""
    import numpy as np

    from sslmri_core.train.models import create_encoder
    from sslmri_core.train.monitor import OnlineProbe, encode
    from sslmri_core.train.pool import load_pretrain_pool
    from sslmri_core.train.checkpoints import load_checkpoint

    data, roles, splits = load_pretrain_pool(cfg)
    names, roles = np.array(splits), np.array(roles)
    bank, queries = np.flatnonzero((names == "train") & (roles == "pool")), np.flatnonzero(names == "val")
    assert len(bank) and len(queries) and not (roles[queries] == "excluded").any()
    state = load_checkpoint(checkpoint)
    encoder = create_encoder(cfg.model)
    encoder.load_state_dict(state["encoder"])
    features = encode(encoder, torch.from_numpy(data.images), torch.device("cpu"), "fp32")
    labels = torch.from_numpy(np.asarray(data.labels, dtype=np.int64))
    n_classes = len(data.classes)
    probe = OnlineProbe(features.shape[1], n_classes, 1e-3, torch.device("cpu"))
    probe.load_state_dict(state["probe"])
    return {
        "knn_acc": knn_accuracy(features[bank], labels[bank], features[queries], labels[queries], n_classes,
                                k=cfg.knn_k),
        "probe_acc": probe.accuracy(features[queries], labels[queries]),
        "n_queries": len(queries),
    }


def test_no_monitoring_without_classes_or_when_turned_off(synth_tumor: Path, tmp_path: Path) -> None:
    cfg = PretrainConfig(data=[str(synth_tumor)], model="test_resnet", image_size=64, batch_size=8, epochs=1,
                         max_steps=1, precision="fp32", monitor=False, out=str(tmp_path / "runs"))
    store = RunStore(f"sqlite:///{tmp_path / 'runs.db'}")
    result = pretrain(cfg, store, show_progress=False)
    assert store.metric_series(result.run_id, "knn_acc") == []
