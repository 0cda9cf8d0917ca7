"""Optimisers (LARS, AdamW, SGD), their parameter groups and the warmup-then-cosine schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from sslmri_core.config import OPTIMIZERS


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, object]]:
    """Weight decay on weights only: norms and biases (1-D parameters) are not decayed."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def default_lr(optimizer: str, batch_size: int) -> float:
    """Peak learning rate when none is given.

    LARS: SimCLR's linear scaling rule, 0.3 x batch / 256 (Chen et al. 2020, appendix B.1);
    SGD: 0.05 x batch / 256 (the usual momentum-SGD rate); AdamW: 1e-3, roughly batch-independent.
    """
    if optimizer == "lars":
        return 0.3 * batch_size / 256
    if optimizer == "sgd":
        return 0.05 * batch_size / 256
    return 1e-3


def make_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """``name`` in :data:`OPTIMIZERS`, with no weight decay on norms and biases.

    LARS is timm's (momentum 0.9, trust coefficient 1e-3 as in SimCLR): the layer-wise trust ratio
    is applied to the decayed group only, so norms and biases get neither decay nor adaptation,
    as in SimCLR's and BYOL's implementations.
    """
    groups = param_groups(model, weight_decay)
    if name == "lars":
        from timm.optim import Lars

        groups[0]["always_adapt"] = True  # adapt weights even with weight_decay=0
        groups[1]["always_adapt"] = False  # timm skips adaptation where weight_decay is 0: norms and biases
        return Lars(groups, lr=lr, momentum=0.9, trust_coeff=1e-3)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
