"""One SimCLR training step, shared by ``pretrain`` and ``bench/pretrain_throughput.py``.

Kept free of the run store and the data layer (no SQLAlchemy, pandas) so the benchmark runs on
a machine that has only torch, torchvision, timm, numpy and pillow.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from sslmri_core.config import AugmentConfig
from sslmri_core.train.augment import augment_batch, normalize, to_float
from sslmri_core.train.losses import Gather, nt_xent
from sslmri_core.train.runtime import autocast


def two_views(images: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """uint8 ``(B, S, S)`` (any device) -> normalised, channels-last float views ``(2B, 1, S, S)`` on ``device``.

    Only the uint8 batch crosses to the device (4x fewer bytes than float); augmentation runs there.
    """
    x = to_float(images.to(device, non_blocking=True))
    views = torch.cat([augment_batch(x, cfg, gen), augment_batch(x, cfg, gen)])
    return normalize(views).contiguous(memory_format=torch.channels_last)


def forward_loss(
    net: nn.Module, images: torch.Tensor, cfg: AugmentConfig, temperature: float, gen: torch.Generator,
    device: torch.device, precision: str, gather: Gather | None = None,
    loss_fn: Callable[..., torch.Tensor] = nt_xent, groups: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """NT-Xent of one batch: both views in ONE forward pass (BN sees both, half the kernel launches).

    ``net``: a :class:`~sslmri_core.train.models.SimCLRModel` (possibly inside DistributedDataParallel,
    possibly compiled). ``groups`` ``(B,)``: the images' subject numbers, for NT-Xent's same-subject
    mask. Returns the loss (float32 scalar) and the first view's detached encoder features ``(B, F)``.
    """
    b = images.shape[0]
    views = two_views(images, cfg, gen, device)
    with autocast(device, precision):
        h, z = net(views, return_features=True)
    loss = loss_fn(z[:b], z[b:], temperature, gather) if groups is None \
        else loss_fn(z[:b], z[b:], temperature, gather, groups=groups)
    return loss, h[:b].detach()


def optimizer_step(
    loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> None:
    """Backward and update (loss-scaled for fp16; the scaler is a pass-through otherwise)."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    if scheduler is not None:
        scheduler.step()
