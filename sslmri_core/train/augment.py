"""MRI-safe augmentations applied to whole batches of tensors, with parameters drawn per sample.

torchvision's v2 transforms draw one set of parameters for a whole batch tensor, which would give
every image the same crop; SimCLR needs a different view per image. Crop, flip and rotation are
fused into one per-sample affine matrix, so each batch costs a single ``grid_sample``.

Hand-written on ``affine_grid``/``grid_sample`` rather than kornia: the whole pipeline is ~100
lines of plain torch, runs on any device, draws every parameter from one ``torch.Generator``
(so a run's views are part of its checkpointed random state), and adds no dependency.
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
    """Per-sample ``(n, 2, 3)`` matrices: random resized crop, horizontal flip, small rotation and shear."""
    area = _uniform(n, cfg.crop_scale_min, 1.0, gen)
    log_r = math.log(cfg.crop_ratio)
    ratio = torch.exp(_uniform(n, -log_r, log_r, gen))
    w = torch.sqrt(area * ratio).clamp(max=1.0)
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = _uniform(n, -1.0, 1.0, gen) * (1 - w)
    cy = _uniform(n, -1.0, 1.0, gen) * (1 - h)
    flip = torch.where(torch.rand(n, generator=gen) < cfg.flip_p, -1.0, 1.0)
    angle = torch.deg2rad(_uniform(n, -cfg.rotate_deg, cfg.rotate_deg, gen))
    shear = torch.tan(torch.deg2rad(_uniform(n, -cfg.shear_deg, cfg.shear_deg, gen)))
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotate = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)  # (n, 2, 2)
    shear_m = torch.eye(2).repeat(n, 1, 1)
    shear_m[:, 0, 1] = shear
    scale = torch.diag_embed(torch.stack([w * flip, h], 1))  # output -> input: crop size, mirrored
    theta = torch.zeros(n, 2, 3)
    theta[:, :, :2] = rotate @ shear_m @ scale
    theta[:, 0, 2] = cx
    theta[:, 1, 2] = cy
    return theta


def _blur(x: torch.Tensor, sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per sample; ``x``: ``(B, 1, H, W)``, ``sigma``: ``(B,)`` on x's device."""
    b = x.shape[0]
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (offsets[None, :] / sigma[:, None].clamp(min=1e-3)) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # (B, K)
    y = x.reshape(1, b, *x.shape[2:])  # samples as channels: one grouped conv blurs each with its own kernel
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), kernel[:, None, None, :], groups=b)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), kernel[:, None, :, None], groups=b)
    return y.reshape_as(x)


def _bias_field(
    n: int, size: tuple[int, ...], strength: float, gen: torch.Generator, device: torch.device
) -> torch.Tensor:
    """Smooth multiplicative fields ``(n, 1, H, W)``: exp of a random 4x4 grid upsampled (MRI coil inhomogeneity)."""
    coarse = _uniform(n * 16, -strength, strength, gen).view(n, 1, 4, 4).to(device)
    return torch.exp(F.interpolate(coarse, size=size, mode="bilinear", align_corners=True))


def _device_generator(gen: torch.Generator, device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded from ``gen``: pixel noise is drawn where it is used (no host->device copy)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    return torch.Generator(device=device).manual_seed(seed)


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """One random view of each image. ``x``: float ``(B, 1, H, W)`` in [0, 1]; returns the same shape.

    Per-sample parameters are drawn on the CPU from ``gen`` (so a seed gives the same crops and
    intensities on any device) and applied on ``x``'s device; pixel noise comes from a generator
    on that device seeded from ``gen``. All strengths zero (see :class:`AugmentConfig`) is the identity.
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
    if cfg.bias_field > 0:
        x = (x * _bias_field(n, x.shape[2:], cfg.bias_field, gen, device)).clamp(0.0, 1.0)

    blur_on = torch.rand(n, generator=gen) < cfg.blur_p
    sigma = _uniform(n, 0.1, max(cfg.blur_sigma, 0.1), gen)
    if bool(blur_on.any()):
        radius = max(1, math.ceil(3 * float(sigma.max())))  # from the CPU copy: no device sync
        blurred = _blur(x, sigma.to(device, x.dtype), radius)
        x = torch.where(blur_on.to(device).view(n, 1, 1, 1), blurred, x)

    noise_std = _uniform(n, 0.0, cfg.noise_std, gen).to(device).view(n, 1, 1, 1)
    if cfg.noise_std > 0:
        noise = torch.randn(x.shape, generator=_device_generator(gen, device), device=device, dtype=x.dtype)
        x = x + noise * noise_std
    return x
