"""Batched inference over uint8 images, without augmentation: encoder features and class probabilities.

One copy for every scorer: fine-tuning's validation and test passes, ``evaluate`` on an external
folder, and ``embed``'s feature maps.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sslmri_core.train.augment import normalize, to_float
from sslmri_core.train.models import Classifier, feature_dim
from sslmri_core.train.runtime import autocast

BATCH = 64  # images per forward pass


@torch.no_grad()
def encode(
    encoder: nn.Module, images: torch.Tensor, device: torch.device, precision: str,
    idx: np.ndarray | None = None, batch: int = BATCH, flip: bool = False,
) -> torch.Tensor:
    """Features float32 ``(M, D)`` on ``device`` of uint8 ``images`` ``(N, S, S)`` at ``idx`` ``(M,)``
    (all ``N`` without ``idx``), left-right flipped with ``flip``; an empty selection gives ``(0, D)`` on the CPU.

    The encoder is put in eval mode (BatchNorm's running statistics) and left there: fine-tuning
    sets its modes again where it trains. Batches are normalised on the CPU, then moved.
    """
    encoder.eval()
    n = len(images) if idx is None else len(idx)
    out = []
    for b in range(0, n, batch):
        rows = images[b : b + batch] if idx is None else images[idx[b : b + batch]]
        rows = rows.flip(-1) if flip else rows
        x = normalize(to_float(rows)).to(device)
        with autocast(device, precision):
            out.append(encoder(x.contiguous(memory_format=torch.channels_last)).float())
    return torch.cat(out) if out else torch.zeros(0, feature_dim(encoder))


@torch.no_grad()
def head_probabilities(model: Classifier, features: torch.Tensor) -> np.ndarray:
    """Class probabilities ``(M, K)`` (softmax, fp32) of the classifier's head on encoder features ``(M, D)``."""
    model.eval()
    return F.softmax(model.fc(features.to(model.fc.weight.device)), dim=1).cpu().numpy()


def tta_probabilities(model: Classifier, features: Callable[[bool], torch.Tensor], tta: bool) -> np.ndarray:
    """Class probabilities ``(M, K)`` from ``features(flip)`` (encoder features ``(M, D)`` of the images, mirrored
    left-right when ``flip``); with ``tta`` the mean of the image's and its mirror's (brains are nearly symmetric)."""
    probs = head_probabilities(model, features(False))
    return (probs + head_probabilities(model, features(True))) / 2 if tta else probs


def predict(
    model: Classifier, images: torch.Tensor, idx: np.ndarray, device: torch.device, precision: str,
    tta: bool = False,
) -> np.ndarray:
    """Class probabilities ``(len(idx), K)`` of uint8 ``images`` ``(N, S, S)`` at ``idx``; ``model`` on ``device``
    (:func:`tta_probabilities` with ``tta``)."""
    return tta_probabilities(model, lambda flip: encode(model.encoder, images, device, precision, idx, flip=flip), tta)
