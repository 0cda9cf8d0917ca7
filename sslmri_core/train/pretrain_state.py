"""Where a pretraining run stands, and its checkpoint: :class:`Plan` and :class:`PretrainState`.

The checkpoint's keys are written in one place (:meth:`PretrainState.state_dict`) and read back in
one place (:meth:`PretrainState.load_state_dict`); checkpoints written by earlier versions hold the
same keys and resume.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn

from sslmri_core.config import PretrainConfig, to_dict
from sslmri_core.train.distributed import World, gather_objects
from sslmri_core.train.models import SimCLRModel, create_encoder, feature_dim
from sslmri_core.train.monitor import MonitorBudget, OnlineProbe
from sslmri_core.train.optim import default_lr, make_optimizer, warmup_cosine
from sslmri_core.train.runtime import grad_scaler, rng_state, seed_everything, set_rng_state, use_compile


def resolve_optimizer(cfg: PretrainConfig, world: World | None = None) -> str:
    """``auto``: LARS for a global batch of 256 or more (SimCLR's large-batch setting), AdamW below."""
    if cfg.optimizer != "auto":
        return cfg.optimizer
    return "lars" if cfg.batch_size * (world or World()).size >= 256 else "adamw"


def peak_lr(cfg: PretrainConfig, world: World | None = None) -> float:
    """``--lr``, or the optimiser's default for the global batch (see :func:`sslmri_core.train.optim.default_lr`)."""
    if cfg.lr is not None:
        return cfg.lr
    return default_lr(resolve_optimizer(cfg, world), cfg.batch_size * (world or World()).size)


@dataclass(frozen=True)
class Plan:
    """How a run's steps fall over a pool of ``n_images``: each global batch of ``batch x world.size``
    images is cut into one shard per rank."""

    cfg: PretrainConfig
    world: World
    device: torch.device
    precision: str
    n_images: int

    @property
    def batch(self) -> int:
        """Images per rank and step."""
        return min(self.cfg.batch_size, self.n_images // self.world.size)

    @property
    def global_batch(self) -> int:
        return self.batch * self.world.size

    @property
    def steps_per_epoch(self) -> int:
        return max(1, self.n_images // self.global_batch)

    @property
    def total(self) -> int:
        """Steps of the whole run: every epoch, or ``--max-steps`` when fewer."""
        every_epoch = self.cfg.epochs * self.steps_per_epoch
        return every_epoch if self.cfg.max_steps is None else min(self.cfg.max_steps, every_epoch)

    def shard(self, order: torch.Tensor, b: int) -> torch.Tensor:
        """This rank's pool indices ``(batch,)`` in global batch ``b`` of the epoch's ``order`` ``(N,)``."""
        start = b * self.global_batch + self.world.rank * self.batch
        return order[start : start + self.batch]


@dataclass
class PretrainState:
    """Everything a checkpoint holds: the model and its optimiser, every random stream, and the
    position (the next ``epoch`` and ``batch``, that epoch's ``order`` ``(N,)``, its losses so far)."""

    plan: Plan
    run_id: int
    pool_hash: str
    model: SimCLRModel
    net: nn.Module  # what the loop calls: the model, inside DistributedDataParallel when distributed
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    probe: OnlineProbe | None
    gen: torch.Generator  # the data order: seeded alike on every rank
    aug_gen: torch.Generator  # the augmentations: seeded per rank
    step: int = 0
    epoch: int = 0
    batch: int = 0
    order: torch.Tensor | None = None
    losses: list[float] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    budget: MonitorBudget | None = None  # rank 0's kNN pass sizes (None: no monitoring)
    compiled: bool = False  # ``net`` is torch.compile'd (its first steps compile)

    @classmethod
    def create(cls, plan: Plan, run_id: int, pool_hash: str, n_classes: int | None = None,
               budget: MonitorBudget | None = None) -> PretrainState:
        """A fresh model and optimiser from the run's seed; an online probe over ``n_classes`` on rank 0.

        The order of the random draws below is part of the result: seeding, then the encoder and
        head, then the probe (a resumed run draws them alike, then loads its checkpoint over them).
        """
        cfg, world, device = plan.cfg, plan.world, plan.device
        gen = seed_everything(cfg.seed)
        aug_gen = torch.Generator().manual_seed(cfg.seed * 7919 + 1 + world.rank)
        model = SimCLRModel(create_encoder(cfg.model), cfg.proj_hidden_dim, cfg.proj_dim).to(device)
        if world.distributed and device.type == "cuda":
            # BN statistics over the global batch; converts the layers inside and hands back the same model.
            model = cast(SimCLRModel, torch.nn.SyncBatchNorm.convert_sync_batchnorm(model))
        model = model.to(memory_format=torch.channels_last)
        net: nn.Module = model
        if world.distributed:
            net = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        compiled = use_compile(cfg.compile, device, plan.total)
        if compiled:
            if cfg.compile == "auto":  # a machine that cannot compile trains eagerly rather than failing
                import torch._dynamo as dynamo

                dynamo.config.suppress_errors = True
            net = cast(nn.Module, torch.compile(net))  # shares the model's parameters: checkpoints are unchanged
        optimizer = make_optimizer(model, resolve_optimizer(cfg, world), peak_lr(cfg, world), cfg.weight_decay)
        if device.type == "cuda":
            _fuse(optimizer, True)
        scheduler = warmup_cosine(optimizer, int(cfg.warmup_epochs * plan.steps_per_epoch), plan.total)
        probe = OnlineProbe(feature_dim(model.encoder), n_classes, cfg.probe_lr, device) \
            if n_classes is not None and world.main else None
        return cls(plan, run_id, pool_hash, model, net, optimizer, scheduler, grad_scaler(device, plan.precision),
                   probe, gen, aug_gen, budget=budget, compiled=compiled)

    def next_epoch(self) -> None:
        """Past an epoch's last batch: the next one starts with a new order and no losses."""
        self.epoch, self.batch, self.order, self.losses = self.epoch + 1, 0, None, []

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint. Every rank calls it (each rank's augmentation stream is gathered); rank 0 writes it."""
        plan = self.plan
        return {
            "kind": "pretrain", "run_id": self.run_id, "config": to_dict(plan.cfg),
            "epoch": self.epoch - 1, "step": self.step,  # "epoch": the last one begun before this position
            "encoder": self.model.encoder.state_dict(), "head": self.model.head.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "probe": self.probe.state_dict() if self.probe is not None else None,
            "position": {"epoch": self.epoch, "batch": self.batch, "order": self.order, "losses": list(self.losses)},
            "rng": rng_state(self.gen), "augment_rng": gather_objects(self.aug_gen.get_state()),
            "world_size": plan.world.size, "precision": plan.precision, "device_type": plan.device.type,
            "pool_hash": self.pool_hash, "metrics": dict(self.metrics), "total": plan.total,
            "monitor_budget": self.budget.state_dict() if self.budget is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint :meth:`state_dict` wrote (a checkpoint without ``position``,
        from before mid-epoch checkpoints, continues at the start of the next epoch)."""
        self.model.encoder.load_state_dict(state["encoder"])
        self.model.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])  # its groups' flags too: fused only where it was
        if self.plan.device.type != "cuda":
            _fuse(self.optimizer, False)  # a GPU run resumed on a CPU
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.probe is not None and state.get("probe"):
            self.probe.load_state_dict(state["probe"])
        if self.budget is not None and state.get("monitor_budget"):
            self.budget.load_state_dict(state["monitor_budget"])
        self.step, self.metrics = int(state["step"]), dict(state.get("metrics", {}))
        position = state.get("position") or {"epoch": int(state["epoch"]) + 1, "batch": 0, "order": None, "losses": []}
        self.epoch, self.batch, self.order = position["epoch"], position["batch"], position["order"]
        self.losses = list(position["losses"])
        if "rng" in state:
            set_rng_state(state["rng"], self.gen)
        aug_states = state.get("augment_rng") or []
        if len(aug_states) == self.plan.world.size:  # same number of processes: each continues its own stream
            self.aug_gen.set_state(aug_states[self.plan.world.rank])


def _fuse(optimizer: torch.optim.Optimizer, on: bool) -> None:
    """Use (or stop using) torch's fused kernels of AdamW and SGD: one kernel per step for all parameters
    on CUDA. Set before the first step (their state is created then, where the fused kernels want it).
    timm's LARS has no fused kernel; it uses foreach (multi-tensor) kernels by default."""
    if isinstance(optimizer, (torch.optim.AdamW, torch.optim.SGD)):
        for group in optimizer.param_groups:
            if on:
                group["fused"], group["foreach"] = True, None
            elif group.get("fused"):
                group["fused"] = None  # torch's default again
