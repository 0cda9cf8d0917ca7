"""Optimisers: no decay or LARS adaptation on norms and biases; warm-up then cosine; fp16 only on GPUs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sslmri_core.train.optim import default_lr, make_optimizer, warmup_cosine
from sslmri_core.train.runtime import resolve_precision


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))


@pytest.mark.parametrize("name", ["lars", "adamw", "sgd"])
def test_with_zero_gradients_only_weights_decay(name: str) -> None:
    model = _model()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)  # non-zero biases and norm weights: decay would move them
    before = {k: v.clone() for k, v in model.named_parameters()}
    opt = make_optimizer(model, name, lr=0.5, weight_decay=0.1)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for key, param in model.named_parameters():
        if param.ndim <= 1:  # biases and BN weights: neither decayed nor adapted
            torch.testing.assert_close(param, before[key], rtol=0, atol=0)
        else:
            assert param.abs().sum() < before[key].abs().sum(), key


def test_lars_scales_each_layer_update_by_its_trust_ratio() -> None:
    # Same gradient direction, weights 10x larger: LARS takes a 10x larger step (||w|| / ||g||).
    steps = []
    for scale in (1.0, 10.0):
        layer = nn.Linear(4, 4, bias=False)
        with torch.no_grad():
            layer.weight.fill_(scale)
        opt = make_optimizer(layer, "lars", lr=1.0, weight_decay=0.0)
        before = layer.weight.detach().clone()
        layer.weight.grad = torch.ones_like(layer.weight)
        opt.step()
        steps.append(float((before - layer.weight.detach()).abs().mean()))
    assert steps[1] == pytest.approx(10 * steps[0], rel=1e-4)


def test_default_lr_follows_simclr_scaling() -> None:
    assert default_lr("lars", 4096) == pytest.approx(4.8)  # 0.3 x 4096 / 256, the paper's setting
    assert default_lr("lars", 512) == pytest.approx(0.6)
    assert default_lr("adamw", 32) == pytest.approx(1e-3)


def test_warmup_then_cosine() -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, warmup_steps=4, total_steps=12)
    lrs = []
    for _ in range(12):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert all(a > b for a, b in zip(lrs[4:], lrs[5:]))  # decays monotonically after warm-up
    assert lrs[-1] < 0.05


def test_unknown_optimizer_and_fp16_on_cpu_are_refused() -> None:
    with pytest.raises(ValueError, match="--optimizer"):
        make_optimizer(_model(), "adam", 1e-3, 0.0)
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", torch.device("cpu"))
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
