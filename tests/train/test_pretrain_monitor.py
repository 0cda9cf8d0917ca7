"""Monitoring while pretraining: per-step loss / lr / images/s, per-epoch kNN and online-probe accuracy."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sslmri_core.config import PretrainConfig
from sslmri_core.store.writer import RunStore
from sslmri_core.train import monitor as monitor_module
from sslmri_core.train.monitor import MonitorBudget, MonitorSet, knn_accuracy, monitor_pass
from sslmri_core.train.pretrain import pretrain


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
    # A small monitor set is always scored whole (bank and every query), and the run says so.
    for key, size in (("monitor_bank", reference["n_bank"]), ("monitor_queries", reference["n_queries"])):
        assert [v for _, _, v in store.metric_series(result.run_id, key)] == [size] * 3, key


def _reference_quality(cfg: PretrainConfig, checkpoint: str) -> dict[str, float]:
    """kNN and probe accuracy recomputed from the run's final checkpoint: the pool's train images are the
    bank, the val images (never the train ones, never the left-out test ones) are scored."""
    import numpy as np

    from sslmri_core.train.checkpoints import load_checkpoint
    from sslmri_core.train.models import create_encoder
    from sslmri_core.train.monitor import OnlineProbe, encode
    from sslmri_core.train.pool import load_pretrain_pool

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
        "n_queries": len(queries), "n_bank": len(bank),
    }


def test_no_monitoring_without_classes_or_when_turned_off(synth_tumor: Path, tmp_path: Path) -> None:
    cfg = PretrainConfig(data=[str(synth_tumor)], model="test_resnet", image_size=64, batch_size=8, epochs=1,
                         max_steps=1, precision="fp32", monitor=False, out=str(tmp_path / "runs"))
    store = RunStore(f"sqlite:///{tmp_path / 'runs.db'}")
    result = pretrain(cfg, store, show_progress=False)
    assert store.metric_series(result.run_id, "knn_acc") == []


def test_monitor_budget_keeps_the_ratio_shrinks_to_the_allowance_and_skips_below_the_floor() -> None:
    # Caught bugs: the caps are used whatever the training time; bank and queries shrink unevenly; a pass of
    # a handful of images (meaningless kNN) still runs; a size that still fits is changed (curves stop comparing).
    budget = MonitorBudget(share=1.0, k=20, bank_cap=2000, query_cap=500, per_image_s=0.01)
    assert budget.choose(train_s=100.0) == (2000, 500)  # generous: the full caps
    budget = MonitorBudget(share=0.1, k=20, bank_cap=2000, query_cap=500, per_image_s=0.01)
    bank, queries = budget.choose(train_s=50.0)  # 5 s allowed: 500 images, less headroom
    assert bank + queries <= 500 and bank == 4 * queries and bank >= 300
    assert budget.choose(train_s=52.0) == (bank, queries)  # still fits: the same subset
    assert budget.choose(train_s=40.0)[0] < bank  # no longer fits: smaller
    assert budget.note is None
    assert budget.choose(train_s=1.0) == (0, 0)  # 1 s allowed (the floor): 100 images, under 20 queries
    assert budget.note is not None and "skipped" in budget.note and "0.1 of 1.0 s" in budget.note
    budget.note = None  # printed
    assert budget.choose(train_s=1.0) == (0, 0) and budget.note is None  # one note per run


class _SlowEncoder(nn.Module):
    """Features of the image's first pixels, after 1 ms per image: encoding is what costs."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(1e-3 * len(x))
        self.seen += len(x)
        return x.flatten(1)[:, :8].float()


def _monitor_set(n_bank: int, n_queries: int) -> tuple[torch.Tensor, MonitorSet]:
    rng = np.random.default_rng(0)
    n = n_bank + n_queries
    images = torch.from_numpy(rng.integers(0, 255, (n, 8, 8), dtype=np.uint8))
    order = rng.permutation(n)
    return images, MonitorSet(rng.integers(0, 3, n), order[:n_bank], order[n_bank:], 3)


def test_a_slow_encoder_gets_a_smaller_pass_or_none(monkeypatch: pytest.MonkeyPatch) -> None:
    # Caught bugs: the sizes are chosen but the whole set is encoded anyway; the first (timing) chunk is
    # encoded twice; a pass that does not fit runs anyway.
    monkeypatch.setattr(monitor_module, "MIN_PASS_S", 0.0)
    images, mon = _monitor_set(1200, 300)
    cpu = torch.device("cpu")
    encoder = _SlowEncoder()
    budget = MonitorBudget.for_set(mon, share=0.1, k=5)
    budget.train_s = 8.0  # 0.8 s allowed: at 1 ms or more per image, at most 800 of the 1,500 images
    out = monitor_pass(encoder, images, mon, None, cpu, "fp32", 5, budget, train_views=0)
    assert out is not None and 0 <= out["knn_acc"] <= 1
    bank, queries = int(out["monitor_bank"]), int(out["monitor_queries"])
    assert 10 <= bank < 800 and 20 <= queries < 200 and abs(bank - 4 * queries) <= 4
    assert encoder.seen == bank + queries  # the timing chunk is part of the bank
    assert budget.train_s == 0.0 and budget.per_image_s is not None and budget.per_image_s >= 1e-3

    encoder.seen = 0
    budget.train_s = 0.1  # 10 ms allowed: a handful of images
    assert monitor_pass(encoder, images, mon, None, cpu, "fp32", 5, budget, train_views=0) is None
    assert encoder.seen == 0 and budget.note is not None  # measured already: nothing encoded

    generous = MonitorBudget.for_set(mon, share=1.0, k=5)
    generous.train_s = 100.0
    out = monitor_pass(_SlowEncoder(), images, mon, None, cpu, "fp32", 5, generous, train_views=0)
    assert out is not None and (out["monitor_bank"], out["monitor_queries"]) == (1200, 300)


def test_a_run_whose_monitor_would_cost_too_much_skips_it_with_one_note(
    synth_tumor: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Caught bugs: the monitor runs whatever it costs; the note is printed at every skipped pass; a skipped pass
    # still logs a (stale) accuracy.
    real_encode = monitor_module.encode

    def slow_encode(encoder: nn.Module, images: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        time.sleep(0.06 * len(images))  # 30 images: 1.8 s, over the 1 s a pass may always take
        return real_encode(encoder, images, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(monitor_module, "encode", slow_encode)
    monkeypatch.setattr(monitor_module, "SMALL_SET", 0)  # the 30 images would otherwise be scored whole, untimed
    cfg = PretrainConfig(data=[str(synth_tumor)], model="test_resnet", image_size=64, batch_size=8, epochs=2,
                         precision="fp32", out=str(tmp_path / "runs"))
    store = RunStore(f"sqlite:///{tmp_path / 'runs.db'}")
    result = pretrain(cfg, store, show_progress=False)
    assert store.metric_series(result.run_id, "knn_acc") == []
    assert len(store.metric_series(result.run_id, "loss")) >= 6
    assert capsys.readouterr().err.count("kNN monitor pass skipped") == 1
    assert "skipped" in store.params(result.run_id)["monitor_skipped"]
