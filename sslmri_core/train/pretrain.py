"""SimCLR pretraining: two augmented views per image, one forward pass, NT-Xent.

Resumable: checkpoints hold the model, optimiser, scheduler, every random state and the position
in the data (epoch, batch, that epoch's order), written at every epoch end, every
``checkpoint_minutes`` mid-epoch, and at the next step boundary after SIGTERM or Ctrl-C. A run
whose process died continues with :func:`resume_pretrain` (``pretrain --resume ID``) on the
same steps it would have taken.
"""

from __future__ import annotations

import hashlib
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sslmri_core.config import PretrainConfig, from_dict, to_dict
from sslmri_core.data.loading import ImageSet, concat_sets, load_folder
from sslmri_core.train.distributed import (
    FollowerStore,
    World,
    all_mean,
    barrier,
    broadcast,
    current_world,
    device_for,
    gather_objects,
    gather_with_grad,
)
from sslmri_core.train.models import SimCLRModel, check_model_name, create_encoder
from sslmri_core.train.monitor import MonitorSet, OnlineProbe, evaluate
from sslmri_core.train.optim import OPTIMIZERS, default_lr, make_optimizer, warmup_cosine
from sslmri_core.progress import console, make_progress
from sslmri_core.train.runtime import (
    PRECISIONS,
    CheckpointError,
    atomic_save,
    device_name,
    grad_scaler,
    load_checkpoint,
    pick_device,
    resolve_precision,
    rng_state,
    run_file,
    seed_everything,
    set_rng_state,
)
from sslmri_core.train.simclr import forward_loss, optimizer_step
from sslmri_core.data.groups import ContentIndex
from sslmri_core.data.splits import split_for
from sslmri_core.store.writer import Heartbeat, RunStore

# Kept importable from here (tests patch ``sslmri_core.train.pretrain.nt_xent`` to force a NaN loss).
from sslmri_core.train.losses import nt_xent  # noqa: E402,F401  isort: skip


POOL_CONTENT = "pool_content.npz"  # in the run folder: the SSL pool by content (see groups.ContentIndex)


def pool_index(store: RunStore, run_id: int) -> ContentIndex:
    """The content of pretraining run ``run_id``'s pool: from its run folder, else (older runs, a
    moved folder) the file hashes kept in the store, which find exact copies only."""
    record = store.get_run(run_id)
    if record.out_dir and (Path(record.out_dir) / POOL_CONTENT).is_file():
        return ContentIndex.load(run_file(Path(record.out_dir) / POOL_CONTENT, record.out_dir, "SSL pool content"))
    hashes = [h for _, split, h, _ in store.split_content(run_id) if split == "pool" and h]
    console.print(f"note: run {run_id} has no {POOL_CONTENT}: its SSL pool is compared by file hash only "
                  "(near copies are not found)")
    return ContentIndex.hashes_only(hashes)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class RunInterrupted(KeyboardInterrupt):
    """SIGTERM or Ctrl-C stopped the run at a step boundary, after writing a checkpoint to resume from."""


@dataclass
class TrainResult:
    """What a training command reports: the run, its checkpoint and its final metrics."""

    run_id: int
    kind: str
    status: str
    checkpoint: str | None
    metrics: dict[str, float]
    out_dir: str


def validate_pretrain(cfg: PretrainConfig) -> None:
    """Reject impossible settings with a message naming the option."""
    checks = [
        (cfg.image_size >= 16, f"--image-size must be at least 16, got {cfg.image_size}"),
        (cfg.batch_size >= 2, f"--batch-size must be at least 2 (SimCLR needs negatives), got {cfg.batch_size}"),
        (cfg.epochs >= 1, f"--epochs must be at least 1, got {cfg.epochs}"),
        (cfg.max_steps is None or cfg.max_steps >= 1, f"--max-steps must be at least 1, got {cfg.max_steps}"),
        (cfg.temperature > 0, f"--temperature must be positive, got {cfg.temperature}"),
        (cfg.checkpoint_minutes >= 0, f"--checkpoint-minutes must be 0 or more, got {cfg.checkpoint_minutes}"),
        (cfg.precision in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)}, got {cfg.precision!r}"),
        (cfg.optimizer in ("auto", *OPTIMIZERS),
         f"--optimizer must be one of auto, {', '.join(OPTIMIZERS)}, got {cfg.optimizer!r}"),
        (cfg.lr is None or cfg.lr > 0, f"--lr must be positive, got {cfg.lr}"),
        (cfg.proj_hidden_dim >= 1 and cfg.proj_dim >= 1,
         f"--proj-hidden-dim and --proj-dim must be at least 1, got {cfg.proj_hidden_dim} and {cfg.proj_dim}"),
        (cfg.knn_k >= 1, f"--knn-k must be at least 1, got {cfg.knn_k}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    check_model_name(cfg.model)


def load_pretrain_data(cfg: PretrainConfig) -> tuple[ImageSet, list[str]]:
    """The pretraining pool and, per image found, its role (``pool`` or ``excluded``).

    Without ``--data`` the pool is the built-in pretraining set (its subjects are never used for
    fine-tuning, so nothing needs excluding). With ``--data`` and ``exclude_test``, each folder's
    test images are left out: its given test split when it has one, else the 70/15/15 subject
    split drawn with ``split_seed`` (the split ``finetune`` uses by default).
    """
    data, roles, _ = load_pretrain_pool(cfg)
    return data, roles


def load_pretrain_pool(cfg: PretrainConfig) -> tuple[ImageSet, list[str], list[str]]:
    """As :func:`load_pretrain_data`, plus each image's split (``train``/``val``/``test``) for monitoring."""
    from sslmri_core.data.builtin import builtin_root

    roots = cfg.data or [str(builtin_root("pretrain"))]
    sets, roles, splits = [], [], []
    for root in roots:
        data = load_folder(root, cfg.image_size, cfg.subject_pattern, cfg.class_map)
        # The very split fine-tuning draws with the same settings: its val/test groups stay out of the pool.
        split = split_for(data, cfg.split_seed, use_given=cfg.use_given_split, allow_leaky=cfg.allow_leaky_split,
                          folds=cfg.folds, fold=cfg.fold)
        names = split.assignment(len(data.items))
        role = ["pool"] * len(data.items)
        if cfg.data and cfg.exclude_test:
            for i in split.test:
                role[int(i)] = "excluded"
        if cfg.data and cfg.exclude_val:
            for i in split.val:
                role[int(i)] = "excluded"
        sets.append(data)
        roles.extend(role)
        splits.extend(names)
    return concat_sets(sets), roles, splits


def monitor_set(found: ImageSet, pool: np.ndarray, splits: list[str], cfg: PretrainConfig) -> MonitorSet | None:
    """kNN bank (train split) and queries (val split) inside the pool, capped; None without 2+ classes."""
    if not cfg.monitor or len(found.classes) < 2:
        return None
    labels = found.labels[pool]
    names = np.array([splits[int(i)] for i in pool])
    picker = np.random.RandomState(cfg.split_seed)  # its own generator: training's random streams stay untouched
    bank = np.flatnonzero(names == "train")
    if cfg.exclude_val and cfg.data:  # val is outside the pool: its images are the queries
        outside = np.array([i for i, name in enumerate(splits) if name == "val"], dtype=np.int64)
        if len(bank) < 2 or len(outside) < 1:
            return None
        bank = np.sort(picker.permutation(bank)[: cfg.knn_bank])
        outside = np.sort(picker.permutation(outside)[: cfg.knn_queries])
        return MonitorSet(labels, bank, np.empty(0, dtype=np.int64), len(found.classes),
                          query_images=found.images[outside], query_labels=found.labels[outside])
    queries = np.flatnonzero(names == "val")
    if len(bank) < 2 or len(queries) < 1:
        return None
    bank = np.sort(picker.permutation(bank)[: cfg.knn_bank])
    queries = np.sort(picker.permutation(queries)[: cfg.knn_queries])
    return MonitorSet(labels, bank, queries, len(found.classes))


def write_unusable(out_dir: Path, unusable: list[tuple[str, str]], name: str = "unusable.tsv") -> None:
    """Keep the list of files that were not used, with their reasons, beside the run's outputs
    (tab-separated; the csv module quotes names holding tabs, quotes or newlines)."""
    import csv

    if unusable:
        out_dir.mkdir(parents=True, exist_ok=True)
        with (out_dir / name).open("w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, delimiter="\t", lineterminator="\n")
            writer.writerow(["path", "reason"])
            writer.writerows(unusable)


def _load_pool_ranked(
    cfg: PretrainConfig, store: RunStore, world: Any
) -> tuple[ImageSet, list[str], list[str], np.ndarray, Any]:
    """What :func:`load_pretrain_pool` finds (images, roles, splits), plus the pool's indices ``(P,)``.

    Rank 0 fills the image cache first and the other ranks then read it; a non-zero rank gets a
    :class:`FollowerStore` in place of ``store`` (only rank 0 writes).
    """
    if not world.main:
        barrier()
    found, roles, splits = load_pretrain_pool(cfg)
    if world.main:
        barrier()
    else:
        store = FollowerStore(store)
    pool = np.array([i for i, r in enumerate(roles) if r == "pool"], dtype=np.int64)
    return found, roles, splits, pool, store


def pretrain(cfg: PretrainConfig, store: RunStore, *, show_progress: bool = True) -> TrainResult:
    """Run SimCLR pretraining as a tracked run; returns the run's result.

    Under ``torchrun`` (an initialised process group) every rank calls this with the same config;
    rank 0 alone writes to ``store`` and the checkpoint.
    """
    validate_pretrain(cfg)
    world = current_world()
    found, roles, splits, pool, store = _load_pool_ranked(cfg, store, world)
    if len(pool) < 2 * world.size:
        raise ValueError(f"pretraining needs at least 2 usable images per process, found {len(pool)}")
    device = device_for(world) if world.distributed else pick_device()
    precision = resolve_precision(cfg.precision, device)
    run_id = broadcast(store.start_run("pretrain", to_dict(cfg), device=device_name(device)) if world.main else None)
    out_dir = Path(cfg.out).resolve() / f"run-{run_id}"
    store.update_run(run_id, out_dir=str(out_dir))
    n_excluded = len(roles) - len(pool)
    store.log_params(run_id, {
        "n_images": len(pool), "n_excluded_test": n_excluded, "n_unusable": len(found.unusable),
        "precision": precision, "data_roots": found.root, "world_size": world.size,
        "optimizer": resolve_optimizer(cfg, world), "lr": peak_lr(cfg, world),
        "datasets": ",".join(str(store.save_manifest(m)) for m in found.manifests),
        "pool": "built-in pretraining subjects" if not cfg.data else
        ("each folder's train split only" if cfg.exclude_test and cfg.exclude_val else
         "without each folder's test split" if cfg.exclude_test else "all images, test splits included"),
    })
    assert found.grouping is not None and found.thumbs is not None
    store.log_split(run_id, [{"key": it.key, "subject": it.subject, "split": role, "labeled": False,
                              "content_hash": it.content_hash, "group_key": group}
                             for it, role, group in zip(found.items, roles, found.grouping.keys)])
    if world.main:
        write_unusable(out_dir, found.unusable)
        console.print(
            f"pretrain run {run_id}: {len(pool)} images ({n_excluded} {'val/test' if cfg.exclude_val else 'test'} images left out, "
            f"{len(found.unusable)} unusable files) from {found.root}; "
            f"{cfg.model} at {cfg.image_size}px on {device_name(device)}"
            + (f" x {world.size} processes" if world.distributed else "") + f", {precision}"
        )
    with store.track(run_id):
        if world.main:  # the pool by content (hashes, pHashes, 64 px thumbnails): later runs find copies of it
            ContentIndex.build([found.items[int(i)].content_hash for i in pool],
                               found.thumbs[pool]).save(out_dir / POOL_CONTENT)
        metrics, checkpoint = _train(cfg, found.images[pool], store, run_id, out_dir, device, precision,
                                     show_progress, _pool_hash(found.items, pool),
                                     monitor=monitor_set(found, pool, splits, cfg), world=world)
    return TrainResult(run_id, "pretrain", "finished", str(checkpoint), metrics, str(out_dir))


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


def _pool_hash(items: list[Any], pool: np.ndarray) -> str:
    """Fingerprint of the pretraining pool in order: a resumed run must see the same images at the same indices."""
    return hashlib.sha256("\n".join(items[int(i)].key for i in pool).encode()).hexdigest()


def _check_resumable(run_id: int, store: RunStore) -> tuple[PretrainConfig, Any]:
    """The run's config and its checkpoint path, or a one-line reason it cannot be resumed."""
    record = store.get_run_for("--resume", run_id)
    if record.kind != "pretrain":
        raise ValueError(f"--resume {run_id} is a {record.kind} run; only pretraining runs can be resumed")
    if record.status == "finished":
        raise ValueError(f"--resume {run_id}: the run already finished")
    if record.status == "running":
        raise ValueError(f"--resume {run_id}: the run is still running (last heartbeat {record.heartbeat_at}); "
                         "stop it first (SIGTERM writes a checkpoint)")
    if not record.out_dir:
        raise ValueError(f"--resume {run_id}: the run has no output folder recorded")
    cfg = from_dict(PretrainConfig, record.config)
    validate_pretrain(cfg)
    checkpoint = str(run_file(record.checkpoint_path, record.out_dir, "checkpoint")) if record.checkpoint_path else None
    return cfg, {"checkpoint": checkpoint, "out_dir": record.out_dir}


def resume_pretrain(run_id: int, store: RunStore, *, show_progress: bool = True) -> TrainResult:
    """Continue an interrupted (or failed, or killed) pretraining run from its last checkpoint.

    The run keeps its id, config and metric series: points logged after the checkpoint are
    dropped and logged again, so each step appears once. Refused while the run is alive.
    """
    world = current_world()
    found_error: str | None = None
    info: Any = None
    if world.main:
        try:
            info = _check_resumable(run_id, store)
        except (ValueError, CheckpointError) as exc:
            found_error = str(exc)
    found_error, info = broadcast((found_error, info))  # the other ranks must not hang on rank 0's refusal
    if found_error:
        raise ValueError(found_error)
    cfg, where = info
    state = None
    if where["checkpoint"]:
        state = load_checkpoint(where["checkpoint"])
        if state.get("kind") != "pretrain" or state.get("run_id") != run_id:
            raise CheckpointError(f"--resume {run_id}: {where['checkpoint']} is not this run's checkpoint")
    found, _, splits, pool, store = _load_pool_ranked(cfg, store, world)
    pool_hash = _pool_hash(found.items, pool)
    stored_pool = sum(1 for split in store.split_of(run_id).values() if split == "pool")
    if (state is not None and state.get("pool_hash", pool_hash) != pool_hash) or stored_pool != len(pool):
        raise ValueError(f"--resume {run_id}: the data changed since the run started ({stored_pool} images in its "
                         f"pool, {len(pool)} now); start a new run instead")
    device = device_for(world) if world.distributed else pick_device()
    # The precision the run started with (``auto`` measures, and could decide otherwise today).
    precision = state["precision"] if state is not None and state.get("precision") in PRECISIONS \
        and device.type in state.get("device_type", device.type) else resolve_precision(cfg.precision, device)
    if not store.reopen_run(run_id):
        raise ValueError(f"--resume {run_id}: another process has just resumed or is running it")
    done = int(state["step"]) if state is not None else 0
    dropped = store.truncate_metrics(run_id, done)
    store.log_params(run_id, {"resumed_from_step": done})
    out_dir = Path(where["out_dir"])
    if world.main:
        console.print(
            f"resuming pretrain run {run_id} at step {done} ({dropped} metric points after the checkpoint dropped); "
            f"{len(pool)} images, {cfg.model} at {cfg.image_size}px on {device_name(device)}, {precision}"
        )
    with store.track(run_id):
        metrics, checkpoint = _train(cfg, found.images[pool], store, run_id, out_dir, device, precision, show_progress,
                                     pool_hash, resume=state, monitor=monitor_set(found, pool, splits, cfg),
                                     world=world, fresh=False)
    return TrainResult(run_id, "pretrain", "finished", str(checkpoint), metrics, str(out_dir))


class _StopSignals:
    """SIGTERM and the first Ctrl-C ask the training loop to stop at the next step boundary (a second Ctrl-C stops at once)."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt("interrupted by the user")
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous = signal.getsignal(sig)
                self._previous[sig] = signal.SIG_DFL if previous is None else previous
                signal.signal(sig, self._handle)
        return self

    def __exit__(self, *_exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


def _sync_flags(world: World, device: torch.device, *flags: bool) -> list[bool]:
    """Each flag true on every rank when true on any (stop requests, checkpoint timers agree across ranks)."""
    if not world.distributed:
        return list(flags)
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return [bool(v > 0) for v in t.tolist()]


def _train(
    cfg: PretrainConfig,
    images: np.ndarray,
    store: RunStore,
    run_id: int,
    out_dir: Path,
    device: torch.device,
    precision: str,
    show_progress: bool,
    pool_hash: str = "",
    resume: dict[str, Any] | None = None,
    monitor: MonitorSet | None = None,
    world: World | None = None,
    fresh: bool = True,
) -> tuple[dict[str, float], Path]:
    """The SimCLR loop over uint8 images ``(N, S, S)``; checkpoints every epoch (and see module docs).

    Each global batch of ``batch_size x world.size`` images is cut into one shard per rank; the
    epoch's order comes from a generator seeded alike on every rank, the augmentations from one
    seeded per rank.
    """
    world = world or World()
    gen = seed_everything(cfg.seed)  # the data order: identical on every rank
    aug_gen = torch.Generator().manual_seed(cfg.seed * 7919 + 1 + world.rank)
    data = torch.from_numpy(images)
    if device.type == "cuda":
        data = data.pin_memory()  # uint8 batches cross to the GPU asynchronously
    n = len(data)
    batch = min(cfg.batch_size, n // world.size)
    global_batch = batch * world.size
    steps_per_epoch = max(1, n // global_batch)
    total = cfg.epochs * steps_per_epoch if cfg.max_steps is None else min(cfg.max_steps, cfg.epochs * steps_per_epoch)
    model = SimCLRModel(create_encoder(cfg.model), cfg.proj_hidden_dim, cfg.proj_dim).to(device)
    if world.distributed and device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # BN statistics over the global batch
    model = model.to(memory_format=torch.channels_last)
    net: torch.nn.Module = model
    if world.distributed:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = make_optimizer(model, resolve_optimizer(cfg, world), peak_lr(cfg, world), cfg.weight_decay)
    scheduler = warmup_cosine(optimizer, int(cfg.warmup_epochs * steps_per_epoch), total)
    scaler = grad_scaler(device, precision)
    probe = OnlineProbe(int(model.encoder.num_features), monitor.n_classes, cfg.probe_lr, device) \
        if monitor is not None and world.main else None
    probe_labels = torch.from_numpy(monitor.probe_labels()) if probe is not None else None
    gather = gather_with_grad if world.distributed else None
    checkpoint = out_dir / "checkpoint.pt"
    # Where the loop stands: the next epoch and batch, that epoch's order, the losses of its steps so far.
    step, epoch, first_batch, order, losses, metrics = 0, 0, 0, None, [], {}
    if resume is not None:
        model.encoder.load_state_dict(resume["encoder"])
        model.head.load_state_dict(resume["head"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        if resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
        if probe is not None and resume.get("probe"):
            probe.load_state_dict(resume["probe"])
        step, metrics = int(resume["step"]), dict(resume.get("metrics", {}))
        position = resume.get("position") or {"epoch": int(resume["epoch"]) + 1, "batch": 0, "order": None, "losses": []}
        epoch, first_batch, order, losses = position["epoch"], position["batch"], position["order"], list(position["losses"])
        if "rng" in resume:
            set_rng_state(resume["rng"], gen)
        aug_states = resume.get("augment_rng") or []
        if len(aug_states) == world.size:  # same number of processes: each continues its own stream
            aug_gen.set_state(aug_states[world.rank])

    def save() -> None:
        aug_states = gather_objects(aug_gen.get_state())  # every rank takes part; rank 0 writes
        if not world.main:
            return
        atomic_save({
            "kind": "pretrain", "run_id": run_id, "config": to_dict(cfg), "epoch": epoch - 1, "step": step,
            "encoder": model.encoder.state_dict(), "head": model.head.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "probe": probe.state_dict() if probe is not None else None,
            "position": {"epoch": epoch, "batch": first_batch, "order": order, "losses": list(losses)},
            "rng": rng_state(gen), "augment_rng": aug_states, "world_size": world.size,
            "precision": precision, "device_type": device.type,
            "pool_hash": pool_hash, "metrics": dict(metrics), "total": total,
        }, checkpoint)
        store.update_run(run_id, checkpoint_path=str(checkpoint))

    def check_quality() -> None:
        """Per-epoch kNN (and probe) accuracy on the val images, rank 0 only."""
        if monitor is None or not world.main:
            return
        quality = evaluate(model.encoder, data, monitor, probe, device, precision, cfg.knn_k)
        metrics.update(quality)
        store.log_metrics(run_id, quality, step=step, epoch=epoch)

    beat = Heartbeat(store, run_id)
    last_save = time.monotonic()
    with _StopSignals() as stop, make_progress(show_progress and world.main) as progress:
        if fresh and resume is None:
            check_quality()  # step 0: the random encoder, the baseline the curve should rise from
        bar = progress.add_task("pretrain", total=total, completed=step, info="", ips=0.0)
        while epoch < cfg.epochs and step < total:
            model.train()
            if order is None:
                order = torch.randperm(n, generator=gen)
            while first_batch < steps_per_epoch and step < total:
                due = bool(cfg.checkpoint_minutes) and time.monotonic() - last_save >= 60 * cfg.checkpoint_minutes
                stopping, due = _sync_flags(world, device, stop.requested is not None, due)
                if stopping:
                    save()
                    raise RunInterrupted(f"stopped by {stop.requested or 'another rank'} at step {step} of {total}; "
                                         f"checkpoint saved, continue with: python cli.py pretrain --resume {run_id}")
                b = first_batch
                start = time.perf_counter()
                idx = order[b * global_batch + world.rank * batch : b * global_batch + (world.rank + 1) * batch]
                loss, features = forward_loss(net, data[idx], cfg.augment, cfg.temperature, aug_gen, device,
                                              precision, gather, loss_fn=nt_xent)
                value = float(all_mean(loss.detach().reshape(1))[0])
                if not np.isfinite(value):
                    raise NonFiniteLossError(
                        f"loss became {value} at step {step}; stopped, last good checkpoint kept at {checkpoint}"
                    )
                optimizer_step(loss, optimizer, scaler, scheduler)
                if probe is not None:
                    probe.step(features, probe_labels[idx].to(device))
                step += 1
                first_batch += 1
                ips = 2 * global_batch / (time.perf_counter() - start)  # both views count
                losses.append(value)
                store.log_metrics(
                    run_id, {"loss": value, "lr": scheduler.get_last_lr()[0], "images_per_s": ips},
                    step=step, epoch=epoch,
                )
                beat()
                progress.update(bar, advance=1, info=f"epoch {epoch + 1}/{cfg.epochs} loss {value:.3f}", ips=ips)
                if due and first_batch < steps_per_epoch and step < total:
                    save()
                    last_save = time.monotonic()
            if losses:
                metrics.update({"epoch_loss": float(np.mean(losses)), "steps": float(step)})
                store.log_metrics(run_id, {"epoch_loss": metrics["epoch_loss"]}, step=step, epoch=epoch)
            check_quality()
            epoch, first_batch, order, losses = epoch + 1, 0, None, []
            save()
            last_save = time.monotonic()
    return metrics, checkpoint
