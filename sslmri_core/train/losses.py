"""NT-Xent, the SimCLR contrastive loss (Chen et al. 2020, eq. 1), on one process or across ranks."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Gather = Callable[[torch.Tensor], tuple[torch.Tensor, int]]


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2, gather: Gather | None = None) -> torch.Tensor:
    """Normalised-temperature cross entropy over ``2N`` views.

    ``z1``, ``z2``: projections ``(N, D)`` of two views of the same ``N`` images. For each of the
    ``2N`` views the positive is its partner and every other view is a negative. With ``gather``
    (e.g. :func:`sslmri_core.train.distributed.gather_with_grad`, returning all ranks' ``(W * 2N, D)``
    rows and this rank's offset) the negatives are the views of all ``W`` ranks: ``2WN - 2`` per
    anchor; the loss is the mean over this rank's anchors, so the mean over ranks is the loss of
    the global batch. Returns a scalar, computed in float32 whatever the input dtype.
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"expected two (N, D) tensors of one shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)  # (2N, D)
    everyone, offset = gather(z) if gather is not None else (z, 0)  # (2WN, D)
    sim = z @ everyone.T / temperature  # (2N, 2WN) cosine similarities
    own = torch.arange(2 * n, device=z.device)
    sim[own, own + offset] = float("-inf")  # a view is not its own negative
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device) + offset
    return F.cross_entropy(sim, partner)
