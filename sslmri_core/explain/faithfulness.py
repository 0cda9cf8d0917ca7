"""Does a CAM point at what the model uses? Confidence drops when the map's top region is removed,
against removing a random region of the same size, and pytorch-grad-cam's ROAD score.

A map that explains the prediction should cost the model more confidence when its most activated
``k`` % of pixels are replaced by a blurred copy than when the same area is replaced at random.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from sslmri_core.explain.cam_stats import random_blob_mask, top_fraction_mask


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


def deletion_drops(
    model: nn.Module,
    x: torch.Tensor,
    cams: np.ndarray,
    targets: np.ndarray,
    confidence: np.ndarray,
    *,
    topk_pct: float,
    rng: np.random.Generator,
    precision: str = "fp32",
) -> tuple[np.ndarray, np.ndarray]:
    """``(deletion_drop, random_drop)``, each ``(B,)``: confidence before minus after replacing the map's
    top ``topk_pct`` % (or as many random-blob pixels) with the blurred image. ``cams``: ``(B, S, S)``."""
    shape = cams.shape[1:]
    top = np.stack([top_fraction_mask(c, topk_pct) for c in cams])
    rnd = np.stack([random_blob_mask(shape, topk_pct, rng) for _ in cams])
    base = blurred(x)
    both = torch.cat([
        torch.where(torch.from_numpy(top)[:, None].to(x.device), base, x),
        torch.where(torch.from_numpy(rnd)[:, None].to(x.device), base, x),
    ])
    after = class_confidence(model, both, np.concatenate([targets, targets]), precision)
    n = len(targets)
    return confidence - after[:n], confidence - after[n:]


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
