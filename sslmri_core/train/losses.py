"""NT-Xent, the SimCLR contrastive loss (Chen et al. 2020, eq. 1), on one process or across ranks."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Gather = Callable[[torch.Tensor], tuple[torch.Tensor, int]]


def nt_xent(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2, gather: Gather | None = None,
    groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """Normalised-temperature cross entropy over ``2N`` views.

    ``z1``, ``z2``: projections ``(N, D)`` of two views of the same ``N`` images. For each of the
    ``2N`` views the positive is its partner and every other view is a negative. With ``gather``
    (e.g. :func:`sslmri_core.train.distributed.gather_with_grad`, returning all ranks' ``(W * 2N, D)``
    rows and this rank's offset) the negatives are the views of all ``W`` ranks: ``2WN - 2`` per
    anchor; the loss is the mean over this rank's anchors, so the mean over ranks is the loss of
    the global batch. Returns a scalar, computed in float32 whatever the input dtype.

    ``groups``: int64 ``(N,)`` subject ids of the images. Views of two different images of one
    group are not each other's negatives (their logits are -inf): slices of one patient are not
    pushed apart, so the encoder is not rewarded for telling patients apart. The positive pair
    stays. With ``gather`` the ids are gathered with the same function (it must take int64 too).
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"expected two (N, D) tensors of one shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    n = z1.shape[0]
    if groups is not None and tuple(groups.shape) != (n,):
        raise ValueError(f"groups must hold one id per image, shape ({n},), got {tuple(groups.shape)}")
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)  # (2N, D)
    everyone, offset = gather(z) if gather is not None else (z, 0)  # (2WN, D)
    sim = z @ everyone.T / temperature  # (2N, 2WN) cosine similarities
    own = torch.arange(2 * n, device=z.device)
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device) + offset
    if groups is None:
        masked = torch.zeros_like(sim, dtype=torch.bool)
    else:
        ids = torch.cat([groups, groups]).to(device=z.device, dtype=torch.int64)  # (2N,): each view's group
        all_ids = gather(ids)[0] if gather is not None else ids  # (2WN,)
        masked = ids[:, None] == all_ids[None, :]  # same subject (own view and partner included)
        masked[own, partner] = False  # the positive stays
    masked[own, own + offset] = True  # a view is not its own negative
    return F.cross_entropy(sim.masked_fill(masked, float("-inf")), partner)
