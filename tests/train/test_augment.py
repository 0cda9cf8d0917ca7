"""Batch augmentations: identity at zero strength, seedable, different per sample; the preview command."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cli import app
from sslmri_core.train.augment import augment_batch
from sslmri_core.config import AugmentConfig

ZERO = AugmentConfig(crop_scale_min=1.0, crop_ratio=1.0, flip_p=0.0, rotate_deg=0.0, shear_deg=0.0, brightness=0.0,
                     contrast=0.0, gamma=0.0, blur_p=0.0, noise_std=0.0, bias_field=0.0)


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


@pytest.mark.parametrize("name, value", [
    ("crop_scale_min", 0.4), ("rotate_deg", 15.0), ("shear_deg", 8.0), ("brightness", 0.3), ("contrast", 0.3),
    ("gamma", 0.4), ("blur_p", 1.0), ("noise_std", 0.05), ("bias_field", 0.4),
])
def test_each_augmentation_alone_changes_the_image_and_is_seed_reproducible(name: str, value: float) -> None:
    x = _batch()
    cfg = dataclasses.replace(ZERO, **{name: value})
    a, b = (augment_batch(x, cfg, torch.Generator().manual_seed(3)) for _ in range(2))
    assert torch.equal(a, b)
    assert (a - x).abs().mean() > 1e-3


def test_bias_field_is_smooth_and_multiplicative() -> None:
    x = torch.full((4, 1, 64, 64), 0.5)
    y = augment_batch(x, dataclasses.replace(ZERO, bias_field=0.3), torch.Generator().manual_seed(0))
    ratio = y / x
    assert ratio.min() >= np.exp(-0.3) - 0.05 and ratio.max() <= np.exp(0.3) + 0.05
    # neighbouring pixels differ by far less than the field's range: a smooth, low-frequency field
    assert (ratio[..., 1:] - ratio[..., :-1]).abs().max() < 0.05 < float(ratio.max() - ratio.min())


def test_augment_preview_writes_a_grid_of_pairs(synth_tumor: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out_a, out_b = tmp_path / "a.png", tmp_path / "b.png"
    args = ["--data", str(synth_tumor), "--n", "3", "--image-size", "64", "--augment", "bias_field=0.3"]
    first = runner.invoke(app, ["augment-preview", str(out_a), *args, "--json"])
    assert first.exit_code == 0, first.stderr
    summary = json.loads(first.stdout.splitlines()[-1])
    assert summary["pairs"] == 3 and summary["augment"]["bias_field"] == 0.3
    grid = np.asarray(Image.open(out_a))
    assert grid.shape == (3 * 64 + 2 * 2, 3 * 64 + 2 * 2)
    assert not np.array_equal(grid[:64, :64], grid[:64, 66:130])  # the view differs from the original
    assert runner.invoke(app, ["augment-preview", str(out_b), *args]).exit_code == 0
    assert np.array_equal(grid, np.asarray(Image.open(out_b)))  # same seed, same grid
    bad = runner.invoke(app, ["augment-preview", str(out_b), "--data", str(synth_tumor), "--augment", "hue=0.1"])
    assert bad.exit_code == 2 and "--augment" in bad.stderr
