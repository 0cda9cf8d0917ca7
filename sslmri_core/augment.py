"""MRI-safe augmentations applied to whole batches of tensors, with parameters drawn per sample.

torchvision's v2 transforms draw one set of parameters for a whole batch tensor, which would give
every image the same crop; SimCLR needs a different view per image. Crop, flip and rotation are
fused into one per-sample affine matrix, so each batch costs a single ``grid_sample``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sslmri_core.config import AugmentConfig

NORM_MEAN = 0.2  # typical mean of a brain slice scaled to [0, 1] (much of it background)
NORM_STD = 0.25


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, H, W)`` or ``(B, 1, H, W)`` -> float ``(B, 1, H, W)`` in [0, 1]."""
    x = images.unsqueeze(1) if images.ndim == 3 else images
    return x.float() / 255.0


def normalize(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] intensities -> the network's input scale."""
    return (x - NORM_MEAN) / NORM_STD


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def _affine(n: int, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Per-sample ``(n, 2, 3)`` matrices: random resized crop, horizontal flip, small rotation."""
    area = _uniform(n, cfg.crop_scale_min, 1.0, gen)
    log_r = math.log(cfg.crop_ratio)
    ratio = torch.exp(_uniform(n, -log_r, log_r, gen))
    w = torch.sqrt(area * ratio).clamp(max=1.0)
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = _uniform(n, -1.0, 1.0, gen) * (1 - w)
    cy = _uniform(n, -1.0, 1.0, gen) * (1 - h)
    flip = torch.where(torch.rand(n, generator=gen) < cfg.flip_p, -1.0, 1.0)
    angle = torch.deg2rad(_uniform(n, -cfg.rotate_deg, cfg.rotate_deg, gen))
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = cos * w * flip
    theta[:, 0, 1] = -sin * h
    theta[:, 1, 0] = sin * w * flip
    theta[:, 1, 1] = cos * h
    theta[:, 0, 2] = cx
    theta[:, 1, 2] = cy
    return theta


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per sample; ``x``: ``(B, 1, H, W)``, ``sigma``: ``(B,)``."""
    b = x.shape[0]
    radius = max(1, int(math.ceil(3 * float(sigma.max()))))
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (offsets[None, :] / sigma[:, None].clamp(min=1e-3)) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # (B, K)
    y = x.reshape(1, b, *x.shape[2:])  # samples as channels: one grouped conv blurs each with its own kernel
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), kernel[:, None, None, :], groups=b)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), kernel[:, None, :, None], groups=b)
    return y.reshape_as(x)


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """One random view of each image. ``x``: float ``(B, 1, H, W)`` in [0, 1]; returns the same shape.

    Parameters are drawn on the CPU from ``gen`` (so a seed gives the same views on any device),
    then applied on ``x``'s device.
    """
    n, device = x.shape[0], x.device
    theta = _affine(n, cfg, gen).to(device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    brightness = _uniform(n, -cfg.brightness, cfg.brightness, gen).to(device).view(n, 1, 1, 1)
    contrast = _uniform(n, 1 - cfg.contrast, 1 + cfg.contrast, gen).to(device).view(n, 1, 1, 1)
    log_g = math.log1p(cfg.gamma)
    gamma = torch.exp(_uniform(n, -log_g, log_g, gen)).to(device).view(n, 1, 1, 1)
    mean = x.mean(dim=(2, 3), keepdim=True)
    x = ((x - mean) * contrast + mean + brightness).clamp(0.0, 1.0)
    x = x.pow(gamma)

    blur_on = torch.rand(n, generator=gen) < cfg.blur_p
    sigma = _uniform(n, 0.1, max(cfg.blur_sigma, 0.1), gen)
    if bool(blur_on.any()):
        blurred = _blur(x, sigma.to(device, x.dtype))
        x = torch.where(blur_on.to(device).view(n, 1, 1, 1), blurred, x)

    noise_std = _uniform(n, 0.0, cfg.noise_std, gen).to(device).view(n, 1, 1, 1)
    if cfg.noise_std > 0:
        noise = torch.randn(x.shape, generator=gen).to(device)
        x = x + noise * noise_std
    return x
