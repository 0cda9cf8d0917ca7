"""``augment-preview``: a PNG grid of SimCLR pairs, to see what the augmentations do to real slices."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from sslmri_core.config import PretrainConfig
from sslmri_core.train.augment import augment_batch, to_float


def preview_grid(images: np.ndarray, cfg: PretrainConfig, seed: int) -> np.ndarray:
    """uint8 ``(N, S, S)`` -> uint8 grid ``(N*S + gaps, 3*S + gaps)``: original | view 1 | view 2 per row."""
    gen = torch.Generator().manual_seed(seed)
    x = to_float(torch.from_numpy(images))
    v1, v2 = augment_batch(x, cfg.augment, gen), augment_batch(x, cfg.augment, gen)
    tiles = torch.stack([x, v1, v2], 1).clamp(0, 1)[:, :, 0]  # (N, 3, S, S)
    n, _, s, _ = tiles.shape
    gap = 2
    grid = np.full((n * (s + gap) - gap, 3 * (s + gap) - gap), 255, dtype=np.uint8)
    for i in range(n):
        for j in range(3):
            grid[i * (s + gap) : i * (s + gap) + s, j * (s + gap) : j * (s + gap) + s] = \
                (tiles[i, j].numpy() * 255).round().astype(np.uint8)
    return grid


def write_preview(cfg: PretrainConfig, out: Path, n: int, seed: int) -> dict[str, Any]:
    """Take ``n`` images of the pretraining pool (evenly spread), write their pairs to ``out``."""
    from PIL import Image

    from sslmri_core.train.pool import load_pretrain_data

    found, roles = load_pretrain_data(cfg)
    pool = np.array([i for i, r in enumerate(roles) if r == "pool"], dtype=np.int64)
    pick = pool[np.linspace(0, len(pool) - 1, min(n, len(pool))).round().astype(np.int64)]
    grid = preview_grid(found.images[pick], cfg, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid, mode="L").save(out)
    return {"path": str(out), "pairs": len(pick), "images": [found.items[int(i)].path for i in pick],
            "augment": cfg.augment.__dict__}
