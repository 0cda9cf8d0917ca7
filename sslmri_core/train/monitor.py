"""Is the representation getting better? Cosine kNN accuracy and an online linear probe, per epoch.

kNN follows Wu et al. 2018 (and solo-learn): the ``k`` nearest bank features by cosine
similarity vote with weight ``exp(sim / 0.07)``. The online probe (solo-learn) is a linear layer
trained during pretraining on the *detached* encoder features of each training batch, so it
costs almost nothing and never changes the encoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sslmri_core.train.augment import normalize, to_float
from sslmri_core.train.runtime import autocast

KNN_TEMPERATURE = 0.07


@dataclass
class MonitorSet:
    """Labelled images for monitoring, as indices into the pretraining pool.

    ``labels``: ``(N_pool,)`` class index of each pool image; ``bank`` / ``queries``: pool indices
    of (capped subsets of) the train / val images.
    """

    labels: np.ndarray
    bank: np.ndarray
    queries: np.ndarray
    n_classes: int
    # Val images left out of the pool (``exclude_val``): uint8 ``(Q, S, S)`` and ``(Q,)`` labels; then
    # ``queries`` is empty and these are the queries.
    query_images: np.ndarray | None = None
    query_labels: np.ndarray | None = None

    def probe_labels(self) -> np.ndarray:
        """Labels the online probe may train on: the query (val) images' set to -1."""
        out = self.labels.copy()
        out[self.queries] = -1
        return out


@torch.no_grad()
def encode(
    encoder: nn.Module, images: torch.Tensor, device: torch.device, precision: str, batch: int = 128
) -> torch.Tensor:
    """float32 encoder features ``(N, F)`` of uint8 images ``(N, S, S)``, no augmentation."""
    was_training = encoder.training
    encoder.eval()  # BN uses its running statistics and leaves them alone
    out = []
    for i in range(0, len(images), batch):
        x = normalize(to_float(images[i : i + batch]).to(device)).contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            out.append(encoder(x).float())
    encoder.train(was_training)
    return torch.cat(out)


def knn_accuracy(
    bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, query_labels: torch.Tensor,
    n_classes: int, k: int = 20,
) -> float:
    """Weighted cosine kNN accuracy of ``queries`` ``(Q, F)`` against ``bank`` ``(N, F)``."""
    bank, queries = F.normalize(bank, dim=1), F.normalize(queries, dim=1)
    sim = queries @ bank.T  # (Q, N)
    top, idx = sim.topk(min(k, bank.shape[0]), dim=1)
    votes = torch.zeros(queries.shape[0], n_classes, device=queries.device)
    votes.scatter_add_(1, bank_labels[idx], torch.exp(top / KNN_TEMPERATURE))
    return float((votes.argmax(1) == query_labels).float().mean())


class OnlineProbe:
    """A linear classifier on detached encoder features, trained one step per pretraining batch."""

    def __init__(self, n_features: int, n_classes: int, lr: float, device: torch.device) -> None:
        self.layer = nn.Linear(n_features, n_classes).to(device)
        self.optimizer = torch.optim.AdamW(self.layer.parameters(), lr=lr, weight_decay=0.0)

    def step(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """``features`` ``(B, F)`` (detached here), ``labels`` ``(B,)`` with -1 for images to skip."""
        keep = labels >= 0
        if not bool(keep.any()):
            return
        loss = F.cross_entropy(self.layer(features.detach().float()[keep]), labels[keep])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    @torch.no_grad()
    def accuracy(self, features: torch.Tensor, labels: torch.Tensor) -> float:
        return float((self.layer(features.float()).argmax(1) == labels).float().mean())

    def state_dict(self) -> dict[str, object]:
        return {"layer": self.layer.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.layer.load_state_dict(state["layer"])  # type: ignore[arg-type]
        self.optimizer.load_state_dict(state["optimizer"])  # type: ignore[arg-type]


def evaluate(
    encoder: nn.Module, images: torch.Tensor, mon: MonitorSet, probe: OnlineProbe | None,
    device: torch.device, precision: str, k: int,
) -> dict[str, float]:
    """``knn_acc`` (and ``probe_acc``) on the val queries; ``images``: the pool, uint8 ``(N, S, S)``."""
    labels = torch.from_numpy(mon.labels).to(device)
    bank_idx, query_idx = torch.from_numpy(mon.bank), torch.from_numpy(mon.queries)
    bank = encode(encoder, images[bank_idx], device, precision)
    if mon.query_images is not None and mon.query_labels is not None:
        queries = encode(encoder, torch.from_numpy(mon.query_images), device, precision)
        q_labels = torch.from_numpy(mon.query_labels).to(device)
    else:
        queries = encode(encoder, images[query_idx], device, precision)
        q_labels = labels[query_idx.to(device)]
    out = {"knn_acc": knn_accuracy(bank, labels[bank_idx.to(device)], queries, q_labels, mon.n_classes, k)}
    if probe is not None:
        out["probe_acc"] = probe.accuracy(queries, q_labels)
    return out
