"""Does a CAM point at what the model uses? Confidence drops when the map's top region is removed,
against two references of the same size, and pytorch-grad-cam's ROAD score.

A map that explains the prediction should cost the model more confidence when its most activated
``k`` % of pixels are replaced by a blurred copy than when the same number of pixels is replaced
(1) at random inside the head and (2) where a model-free map of the head puts its top (the head's
central core). Both references stay inside the head: blurring the flat background changes nothing,
so a reference drawn over the whole image is beaten by any map that merely finds the head.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from sslmri_core.explain.cam_stats import head_baseline_map, random_head_mask, top_fraction_mask, top_k_count


class _Scored(nn.Module):
    """The classifier under the run's precision, with fp32 logits (for the metrics' plain forward passes)."""

    def __init__(self, model: nn.Module, precision: str) -> None:
        super().__init__()
        self.model, self.precision = model, precision

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from sslmri_core.train.runtime import autocast

        with autocast(x.device, self.precision):
            return self.model(x.contiguous(memory_format=torch.channels_last)).float()


@torch.no_grad()
def class_confidence(model: nn.Module, x: torch.Tensor, targets: np.ndarray, precision: str = "fp32") -> np.ndarray:
    """Softmax probability ``(B,)`` of class ``targets[i]`` for each image of ``x`` ``(B, 1, S, S)``."""
    probs = torch.softmax(_Scored(model, precision)(x), dim=1).cpu().numpy()
    return probs[np.arange(len(targets)), targets]


def blurred(x: torch.Tensor) -> torch.Tensor:
    """The removal baseline: a strong Gaussian blur (sigma = side / 16), so removed regions keep the
    local brightness but lose their structure (a constant fill would add sharp, out-of-distribution edges)."""
    from torchvision.transforms.v2 import functional as TF  # type: ignore[import-untyped]

    sigma = max(1.0, x.shape[-1] / 16)
    size = int(2 * round(3 * sigma) + 1)
    return TF.gaussian_blur(x.contiguous(), [size, size], [sigma, sigma])


class Drops(NamedTuple):
    """Confidence drops ``(B,)`` of the deletion test: the CAM's top region, a random region inside the
    head, and the model-free head map's top region, all of the same pixel count."""

    deletion: np.ndarray
    random: np.ndarray
    baseline: np.ndarray


def deletion_drops(
    model: nn.Module,
    x: torch.Tensor,
    cams: np.ndarray,
    targets: np.ndarray,
    confidence: np.ndarray,
    *,
    topk_pct: float,
    rng: np.random.Generator,
    heads: np.ndarray | None = None,
    precision: str = "fp32",
) -> Drops:
    """Confidence before minus after replacing ``k`` = ``topk_pct`` % of the pixels with the blurred image:
    the map's top ``k``, ``k`` random-blob pixels inside the head, and the top ``k`` of
    :func:`~sslmri_core.explain.cam_stats.head_baseline_map`. ``cams``: ``(B, S, S)``; ``heads``: bool
    ``(B, S, S)`` head masks (None: the whole image is the head)."""
    shape = cams.shape[1:]
    if heads is None:
        heads = np.ones(cams.shape, dtype=bool)
    k = top_k_count(shape[0] * shape[1], topk_pct)
    regions = np.concatenate([
        np.stack([top_fraction_mask(c, topk_pct) for c in cams]),
        np.stack([random_head_mask(h, k, rng) for h in heads]),
        np.stack([top_fraction_mask(head_baseline_map(h), topk_pct) for h in heads]),
    ])
    base, xs = blurred(x).repeat(3, 1, 1, 1), x.repeat(3, 1, 1, 1)
    removed = torch.where(torch.from_numpy(regions)[:, None].to(x.device), base, xs)
    after = class_confidence(model, removed, np.tile(targets, 3), precision).reshape(3, len(targets))
    return Drops(*(confidence - a for a in after))


def road_scores(model: nn.Module, x: torch.Tensor, cams: np.ndarray, targets: np.ndarray,
                percentiles: Sequence[int], precision: str = "fp32") -> np.ndarray | None:
    """pytorch-grad-cam's ``ROADCombined`` on the target class's softmax ``(B,)``: half the difference
    between removing the least and the most relevant pixels (noisy linear imputation), averaged over
    ``percentiles``; higher = more faithful. None when no percentiles are configured."""
    if not percentiles:
        return None
    from pytorch_grad_cam.metrics.road import ROADCombined
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    metric = ROADCombined(percentiles=[int(p) for p in percentiles])
    scored = _Scored(model, precision)
    with torch.no_grad():
        out = metric(x.float().contiguous(), cams.astype(np.float32),
                     [ClassifierOutputSoftmaxTarget(int(t)) for t in targets], scored)
    return np.asarray(out, dtype=np.float64).reshape(len(targets))
