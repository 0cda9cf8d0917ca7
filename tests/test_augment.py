"""Batch augmentations: identity at zero strength, seedable, different per sample."""

import torch

from sslmri_core.augment import augment_batch
from sslmri_core.config import AugmentConfig

ZERO = AugmentConfig(crop_scale_min=1.0, crop_ratio=1.0, flip_p=0.0, rotate_deg=0.0, brightness=0.0,
                     contrast=0.0, gamma=0.0, blur_p=0.0, noise_std=0.0)


def _batch() -> torch.Tensor:
    return torch.rand(6, 1, 32, 32, generator=torch.Generator().manual_seed(1))


def test_zero_strength_is_identity() -> None:
    x = _batch()
    y = augment_batch(x, ZERO, torch.Generator().manual_seed(0))
    assert torch.allclose(x, y, atol=1e-6)


def test_same_seed_same_views_other_seed_other_views() -> None:
    x = _batch()
    a, b, c = (augment_batch(x, AugmentConfig(), torch.Generator().manual_seed(s)) for s in (5, 5, 6))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_each_sample_gets_its_own_parameters() -> None:
    # The same image repeated must come out as different views (torchvision v2 on a batch would not).
    x = _batch()[:1].repeat(8, 1, 1, 1)
    y = augment_batch(x, AugmentConfig(), torch.Generator().manual_seed(0))
    diffs = [(y[0] - y[i]).abs().mean().item() for i in range(1, 8)]
    assert min(diffs) > 1e-3


def test_full_flip_mirrors() -> None:
    x = _batch()
    cfg = AugmentConfig(**{**ZERO.__dict__, "flip_p": 1.0})
    y = augment_batch(x, cfg, torch.Generator().manual_seed(0))
    assert torch.allclose(y, x.flip(-1), atol=1e-6)
