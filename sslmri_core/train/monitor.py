"""Is the representation getting better? Cosine kNN accuracy and an online linear probe, per epoch.

kNN follows Wu et al. 2018 (and solo-learn): the ``k`` nearest bank features by cosine
similarity vote with weight ``exp(sim / 0.07)``. The online probe (solo-learn) is a linear layer
trained during pretraining on the *detached* encoder features of each training batch, so it
costs almost nothing and never changes the encoder.

A kNN pass encodes every bank and query image, which can cost more than the training it
watches (2,500 ResNet-50 passes per epoch on 2 CPU cores). :class:`MonitorBudget` sizes each pass
to at most ``monitor_share`` of the training time since the last one, from the measured encoder
time per image: bank and queries shrink together (a fixed seeded prefix, so a smaller set is a
subset of a larger one), and a pass too small to mean anything is skipped with a note.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

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

    ``labels``: ``(N_pool,)`` class index of each pool image (-1: no label of the task, e.g. an
    ``--unlabeled`` image); ``bank`` / ``queries``: pool indices of (capped subsets of) the train /
    val images, in a seeded order: a pass that uses fewer takes a prefix.
    """

    labels: np.ndarray
    bank: np.ndarray
    queries: np.ndarray
    n_classes: int
    # Val images left out of the pool (``exclude_val``): uint8 ``(Q, S, S)`` and ``(Q,)`` labels; then
    # ``queries`` is empty and these are the queries.
    query_images: np.ndarray | None = None
    query_labels: np.ndarray | None = None

    @property
    def n_queries(self) -> int:
        return len(self.query_labels) if self.query_labels is not None else len(self.queries)

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


# A monitor set this small is always scored whole, untimed: it costs less than a training step, and a choice
# that depends on timing would make small runs (and their resumed twins) differ.
SMALL_SET = 64
MIN_PASS_S = 1.0  # a pass this cheap is never shrunk (on a small pool it is noise next to start-up)
MIN_QUERIES = 20  # below this a kNN accuracy moves in steps of 5 points or more: the pass is skipped
TRAIN_COST = 3.0  # one training view costs about three encoder forward passes (forward + backward)
PROBE_CHUNK = 32  # images encoded to measure the encoder when no earlier pass did (half warm-up, half timed)
HEADROOM = 0.9  # a new size leaves this share of the allowance used, so timing noise does not resize it
RESIZE = 1.5  # a size that still fits is kept until the allowance grows this much past it


@dataclass
class MonitorBudget:
    """How many bank and query images each kNN pass encodes: at most ``share`` of the training time
    since the last pass (:meth:`choose`), within the caps (``knn_bank``/``knn_queries``).

    ``bank``/``queries``: the size in use (None before the first pass); ``per_image_s``: the encoder's
    measured time per image; ``train_s``: training time since the last pass (the loop adds to it).
    """

    share: float
    k: int
    bank_cap: int
    query_cap: int
    bank: int | None = None
    queries: int | None = None
    per_image_s: float | None = None
    train_s: float = 0.0
    note: str | None = None  # why a pass was skipped, until it was printed (once per run)
    noted: bool = False

    @classmethod
    def for_set(cls, mon: MonitorSet, share: float, k: int) -> MonitorBudget:
        return cls(share, k, len(mon.bank), mon.n_queries)

    @property
    def timed(self) -> bool:
        """Whether pass sizes depend on time (not for a set of :data:`SMALL_SET` images or fewer)."""
        return self.bank_cap + self.query_cap > SMALL_SET

    def choose(self, train_s: float, estimated: bool = False) -> tuple[int, int]:
        """``(bank, queries)`` for a pass after ``train_s`` seconds of training (``estimated``: before any, the
        baseline pass); ``(0, 0)``: skip it (and ``note`` says why). Needs ``per_image_s`` when :attr:`timed`."""
        full = self.bank_cap + self.query_cap
        if not self.timed:
            self.bank, self.queries = self.bank_cap, self.query_cap
            return self.bank, self.query_cap
        assert self.per_image_s is not None and self.per_image_s > 0
        allowance_s = max(self.share * train_s, MIN_PASS_S)
        allowed = allowance_s / self.per_image_s  # images
        current = None if self.bank is None or self.queries is None else self.bank + self.queries
        if allowed >= full:
            total = full
        elif current and current <= allowed < RESIZE * current:
            total = current  # still fits: the same subset as the last pass, so the points compare
        else:
            total = int(allowed * HEADROOM)
        bank = min(self.bank_cap, round(total * self.bank_cap / full))
        queries = min(self.query_cap, total - bank)
        if total < full and (bank < 2 * self.k or queries < MIN_QUERIES):
            if not self.noted:
                self.noted = True
                self.note = (f"kNN monitor pass skipped: its {full} images would take {full * self.per_image_s:.1f} s, "
                             f"and the {allowance_s:.1f} s allowed ({self.share:g} of {train_s:.1f} s of training"
                             f"{', estimated' if estimated else ''}) "
                             f"encode {int(allowed)}, under {2 * self.k} bank + {MIN_QUERIES} query images; passes "
                             "run again once the training between them is long enough")
            return 0, 0
        self.bank, self.queries = bank, queries
        return bank, queries

    def state_dict(self) -> dict[str, Any]:
        return {"bank": self.bank, "queries": self.queries, "train_s": self.train_s}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The size in use and the training time since the last pass (the encoder is timed again)."""
        self.bank, self.queries, self.train_s = state["bank"], state["queries"], float(state["train_s"])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def monitor_pass(
    encoder: nn.Module, images: torch.Tensor, mon: MonitorSet, probe: OnlineProbe | None, device: torch.device,
    precision: str, k: int, budget: MonitorBudget, train_views: int,
) -> dict[str, float] | None:
    """``knn_acc`` (and ``probe_acc``) on the val queries, ``images`` being the pool (uint8 ``(N, S, S)``), on as
    many bank and query images as ``budget`` allows after the training since the last pass, and the sizes
    used (``monitor_bank``, ``monitor_queries``); None when the pass is skipped.

    Without an earlier measurement the encoder is timed on the first bank images (part of every
    subset, so nothing is encoded twice; the first half of them warms it up, the second is timed); later
    passes time themselves. Before any training (the baseline pass) the training time
    is estimated as ``train_views`` (the views until the next pass) x :data:`TRAIN_COST` forward passes.
    """
    start = time.perf_counter()
    first: torch.Tensor | None = None
    if budget.per_image_s is None and budget.timed:  # two equal chunks: the first pays one-off costs, then timed
        half = min(PROBE_CHUNK, len(mon.bank)) // 2
        warm = encode(encoder, images[torch.from_numpy(mon.bank[:half])], device, precision)
        _sync(device)
        timed = time.perf_counter()
        first = torch.cat([warm, encode(encoder, images[torch.from_numpy(mon.bank[half : 2 * half])], device,
                                        precision)])
        _sync(device)
        budget.per_image_s = max(time.perf_counter() - timed, 1e-9) / half
    train_s, estimated = budget.train_s, budget.train_s == 0 and budget.per_image_s is not None
    if estimated:  # nothing trained yet (the baseline pass)
        train_s = TRAIN_COST * train_views * (budget.per_image_s or 0.0)
    n_bank, n_queries = budget.choose(train_s, estimated)
    if n_bank == 0:
        return None
    bank_idx = mon.bank[:n_bank]
    if first is not None and len(first) >= n_bank:
        bank = first[:n_bank]
    else:
        rest = encode(encoder, images[torch.from_numpy(bank_idx[0 if first is None else len(first) :])], device,
                      precision)
        bank = rest if first is None else torch.cat([first, rest])
    labels = torch.from_numpy(mon.labels).to(device)
    if mon.query_images is not None and mon.query_labels is not None:
        queries = encode(encoder, torch.from_numpy(mon.query_images[:n_queries]), device, precision)
        q_labels = torch.from_numpy(mon.query_labels[:n_queries]).to(device)
    else:
        query_idx = torch.from_numpy(mon.queries[:n_queries])
        queries = encode(encoder, images[query_idx], device, precision)
        q_labels = labels[query_idx.to(device)]
    out = {"knn_acc": knn_accuracy(bank, labels[torch.from_numpy(bank_idx).to(device)], queries, q_labels,
                                   mon.n_classes, k)}
    if probe is not None:
        out["probe_acc"] = probe.accuracy(queries, q_labels)
    _sync(device)
    if first is None:  # a pass that timed the encoder paid one-off costs: its own rate would mislead
        budget.per_image_s = max(time.perf_counter() - start, 1e-9) / (n_bank + n_queries)
    budget.train_s = 0.0
    return out | {"monitor_bank": float(n_bank), "monitor_queries": float(n_queries)}
