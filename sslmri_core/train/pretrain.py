"""SimCLR pretraining: two augmented views per image, one forward pass, NT-Xent.

Resumable: checkpoints hold the model, optimiser, scheduler, every random state and the position
in the data (epoch, batch, that epoch's order), written at every epoch end, every
``checkpoint_minutes`` mid-epoch, and at the next step boundary after SIGTERM or Ctrl-C. A run
whose process died continues with :func:`resume_pretrain` (``pretrain --resume ID``) on the
same steps it would have taken. What a checkpoint holds: :mod:`sslmri_core.train.pretrain_state`;
the pool: :mod:`sslmri_core.train.pool`.
"""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sslmri_core.config import (
    COMPILE_MODES,
    OPTIMIZERS,
    PRECISIONS,
    PREPROCESS,
    PretrainConfig,
    check_values,
    from_dict,
    refuse_first,
    to_dict,
)
from sslmri_core.data.groups import ContentIndex
from sslmri_core.data.unusable import write_unusable
from sslmri_core.errors import RunFailed, UsageError
from sslmri_core.progress import console, make_progress
from sslmri_core.store.lifecycle import OpenRun, open_run
from sslmri_core.store.writer import RunStore
from sslmri_core.train.checkpoints import atomic_save, checkpoint_path, own_checkpoint
from sslmri_core.train.distributed import (
    World,
    all_mean,
    broadcast,
    current_world,
    device_for,
    gather_with_grad,
)

# Looked up here at every step: tests patch ``sslmri_core.train.pretrain.nt_xent`` to force a NaN loss.
from sslmri_core.train.losses import nt_xent
from sslmri_core.train.models import check_model_name
from sslmri_core.train.monitor import MonitorBudget, MonitorSet, monitor_pass
from sslmri_core.train.pool import POOL_CONTENT, load_pool_ranked, monitor_set, pool_hash, subject_ids
from sslmri_core.train.pretrain_state import Plan, PretrainState, peak_lr, resolve_optimizer
from sslmri_core.train.result import TrainResult
from sslmri_core.train.runtime import device_name, pick_device, place_pool, resolve_precision
from sslmri_core.train.simclr import forward_loss, optimizer_step


class NonFiniteLossError(RunFailed):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class RunInterrupted(KeyboardInterrupt):
    """SIGTERM or Ctrl-C stopped the run at a step boundary, after writing a checkpoint to resume from."""


def validate_pretrain(cfg: PretrainConfig) -> None:
    """Reject impossible settings (non-finite or out-of-range numbers first) with a message naming the option."""
    check_values(cfg)
    checks = [
        (cfg.image_size >= 16, f"--image-size must be at least 16, got {cfg.image_size}"),
        (cfg.batch_size >= 2, f"--batch-size must be at least 2 (SimCLR needs negatives), got {cfg.batch_size}"),
        (cfg.epochs >= 1, f"--epochs must be at least 1, got {cfg.epochs}"),
        (cfg.max_steps is None or cfg.max_steps >= 1, f"--max-steps must be at least 1, got {cfg.max_steps}"),
        (cfg.precision in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)}, got {cfg.precision!r}"),
        (cfg.optimizer in ("auto", *OPTIMIZERS),
         f"--optimizer must be one of auto, {', '.join(OPTIMIZERS)}, got {cfg.optimizer!r}"),
        (cfg.proj_hidden_dim >= 1 and cfg.proj_dim >= 1,
         f"--proj-hidden-dim and --proj-dim must be at least 1, got {cfg.proj_hidden_dim} and {cfg.proj_dim}"),
        (cfg.knn_k >= 1, f"--knn-k must be at least 1, got {cfg.knn_k}"),
        (cfg.preprocess in PREPROCESS,
         f"--preprocess must be one of {', '.join(PREPROCESS)}, got {cfg.preprocess!r}"),
        (cfg.compile in COMPILE_MODES, f"--compile must be one of {', '.join(COMPILE_MODES)}, got {cfg.compile!r}"),
    ]
    refuse_first(checks)
    _check_unlabeled(cfg)
    check_model_name(cfg.model)


def _check_unlabeled(cfg: PretrainConfig) -> None:
    """Every ``--unlabeled`` folder exists and holds other files than the --data folders and each other
    (one folder inside another would put one file in the pool twice)."""
    seen = [("--data", Path(d).expanduser().resolve()) for d in cfg.data]
    for folder in cfg.unlabeled:
        path = Path(folder).expanduser().resolve()
        if not path.is_dir():
            raise ValueError(f"--unlabeled: no such folder {folder}")
        for option, other in seen:
            if path == other or path.is_relative_to(other) or other.is_relative_to(path):
                raise ValueError(f"--unlabeled {folder} overlaps {option} {other} (one folder holds the other); "
                                 "give folders of other images")
        seen.append(("--unlabeled", path))


@contextmanager
def _ranked_run(store: RunStore, world: World, config: dict[str, Any], *, out: str, device: str) -> Iterator[OpenRun]:
    """:func:`open_run` on every rank: rank 0 starts the run and sends its id, the others adopt it."""
    if world.main:
        with open_run(store, "pretrain", config, out=out, device=device) as run:
            broadcast(run.run_id)
            yield run
    else:
        with open_run(store, "pretrain", config, out=out, run_id=broadcast(None)) as run:
            yield run


def pretrain(cfg: PretrainConfig, store: RunStore, *, show_progress: bool = True) -> TrainResult:
    """Run SimCLR pretraining as a tracked run; returns the run's result.

    Under ``torchrun`` (an initialised process group) every rank calls this with the same config;
    rank 0 alone writes to ``store`` and the checkpoint. ``--data`` folders are stored as absolute paths.
    """
    validate_pretrain(cfg)
    cfg = dataclasses.replace(cfg, data=[str(Path(d).expanduser().resolve()) for d in cfg.data],
                              unlabeled=[str(Path(d).expanduser().resolve()) for d in cfg.unlabeled])
    world = current_world()
    found, roles, splits, pool, store = load_pool_ranked(cfg, store, world)
    if len(pool) < 2 * world.size:
        raise ValueError(f"pretraining needs at least 2 usable images per process, found {len(pool)}")
    device = device_for(world) if world.distributed else pick_device()
    precision = resolve_precision(cfg.precision, device)
    with _ranked_run(store, world, to_dict(cfg), out=cfg.out, device=device_name(device)) as run:
        out_dir = run.folder
        n_excluded = roles.count("excluded")
        n_unlabeled, n_overlap = splits.count("unlabeled"), roles.count("overlap")
        store.log_params(run.run_id, {
            "n_images": len(pool), "n_excluded_test": n_excluded, "n_unusable": len(found.unusable),
            **({"unlabeled_images": n_unlabeled, "unlabeled_overlap": n_overlap} if cfg.unlabeled else {}),
            "precision": precision, "data_roots": found.root, "world_size": world.size,
            "optimizer": resolve_optimizer(cfg, world), "lr": peak_lr(cfg, world),
            "datasets": ",".join(str(store.save_manifest(m)) for m in found.manifests),
            "pool": "built-in pretraining subjects" if not cfg.data else
            ("each folder's train split only" if cfg.exclude_test and cfg.exclude_val else
             "without each folder's test split" if cfg.exclude_test else "all images, test splits included"),
        })
        assert found.grouping is not None and found.thumbs is not None
        store.log_split(run.run_id, [{"key": it.key, "subject": it.subject, "split": role, "labeled": False,
                                      "content_hash": it.content_hash, "group_key": group}
                                     for it, role, group in zip(found.items, roles, found.grouping.keys, strict=True)])
        if world.main:
            write_unusable(out_dir, found.unusable)
            left_out = "val/test" if cfg.exclude_val else "test"
            console.print(
                f"pretrain run {run.run_id}: {len(pool)} images ({n_excluded} {left_out} images left out, "
                f"{len(found.unusable)} unusable files) from {found.root}; "
                f"{cfg.model} at {cfg.image_size}px on {device_name(device)}"
                + (f" x {world.size} processes" if world.distributed else "") + f", {precision}"
            )
            if cfg.unlabeled and cfg.data:
                console.print(f"--unlabeled: {n_overlap} of {n_unlabeled} images left out: copies of the task's "
                              "val/test images")
            # The pool by content (hashes, pHashes, 64 px thumbnails): later runs find copies of it.
            ContentIndex.build([found.items[int(i)].content_hash for i in pool],
                               found.thumbs[pool]).save(out_dir / POOL_CONTENT)
        monitor = monitor_set(found, pool, splits, cfg)
        state = PretrainState.create(Plan(cfg, world, device, precision, len(pool)), run.run_id,
                                     pool_hash(found.items, pool), _probe_classes(monitor, world),
                                     _budget(monitor, cfg, world))
        store.log_params(run.run_id, {"compiled": state.compiled})
        checkpoint = _train(state, found.images[pool], subject_ids(found.items, pool), store, out_dir, monitor,
                            show_progress, baseline=True)
    return TrainResult(run.run_id, "pretrain", "finished", str(checkpoint), state.metrics, str(out_dir))


def _probe_classes(monitor: MonitorSet | None, world: World) -> int | None:
    """Classes of the online probe: rank 0 trains one when the pool is monitored."""
    return monitor.n_classes if monitor is not None and world.main else None


def _budget(monitor: MonitorSet | None, cfg: PretrainConfig, world: World) -> MonitorBudget | None:
    """How large rank 0's kNN passes may be (None: no monitoring)."""
    return MonitorBudget.for_set(monitor, cfg.monitor_share, cfg.knn_k) if monitor is not None and world.main else None


def _check_resumable(run_id: int, store: RunStore) -> tuple[PretrainConfig, str | None, str]:
    """The run's config, checkpoint file (None before its first) and folder, or a one-line reason
    it cannot be resumed."""
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
    checkpoint = str(checkpoint_path(record, "--resume")) if record.checkpoint_path else None
    return cfg, checkpoint, record.out_dir


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
        except ValueError as exc:  # CheckpointError and UsageError are ValueErrors too
            found_error = str(exc)
    found_error, info = broadcast((found_error, info))  # the other ranks must not hang on rank 0's refusal
    if found_error:
        raise UsageError(found_error)
    cfg, where, out_dir = info
    checkpoint = own_checkpoint(Path(where), "pretrain", run_id, "--resume") if where else None
    found, _, splits, pool, store = load_pool_ranked(cfg, store, world)
    fingerprint = pool_hash(found.items, pool)
    stored_pool = sum(1 for split in store.split_of(run_id).values() if split == "pool")
    if (checkpoint is not None and checkpoint.get("pool_hash", fingerprint) != fingerprint) or stored_pool != len(pool):
        raise ValueError(f"--resume {run_id}: the data changed since the run started ({stored_pool} images in its "
                         f"pool, {len(pool)} now); start a new run instead")
    device = device_for(world) if world.distributed else pick_device()
    # The precision the run started with (``auto`` measures, and could decide otherwise today).
    precision = checkpoint["precision"] if checkpoint is not None and checkpoint.get("precision") in PRECISIONS \
        and device.type in checkpoint.get("device_type", device.type) else resolve_precision(cfg.precision, device)
    with open_run(store, "pretrain", to_dict(cfg), resume=run_id, out_dir=out_dir) as run:
        done = int(checkpoint["step"]) if checkpoint is not None else 0
        dropped = store.truncate_metrics(run_id, done)
        store.log_params(run_id, {"resumed_from_step": done})
        if world.main:
            console.print(
                f"resuming pretrain run {run_id} at step {done} ({dropped} metric points after the checkpoint "
                f"dropped); {len(pool)} images, {cfg.model} at {cfg.image_size}px on {device_name(device)}, {precision}"
            )
        monitor = monitor_set(found, pool, splits, cfg)
        state = PretrainState.create(Plan(cfg, world, device, precision, len(pool)), run_id, fingerprint,
                                     _probe_classes(monitor, world), _budget(monitor, cfg, world))
        if checkpoint is not None:
            state.load_state_dict(checkpoint)
        path = _train(state, found.images[pool], subject_ids(found.items, pool), store, run.folder, monitor,
                      show_progress, baseline=False)
    return TrainResult(run_id, "pretrain", "finished", str(path), state.metrics, str(run.folder))


class _StopSignals:
    """SIGTERM and the first Ctrl-C ask the training loop to stop at the next step boundary
    (a second Ctrl-C stops at once)."""

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
    state: PretrainState, images: np.ndarray, subjects: np.ndarray, store: RunStore, out_dir: Path,
    monitor: MonitorSet | None, show_progress: bool, *, baseline: bool,
) -> Path:
    """The SimCLR loop over the pool's uint8 images ``(N, S, S)`` (``subjects`` ``(N,)``: their subject
    numbers) from where ``state`` stands; returns the checkpoint file. ``baseline``: first score the
    untrained encoder (step 0, where the curve starts)."""
    plan, cfg, world = state.plan, state.plan.cfg, state.plan.world
    data = place_pool(torch.from_numpy(images), plan.device)  # on the GPU when it fits: batches gathered there
    groups = torch.from_numpy(subjects).to(data.device) if cfg.mask_same_subject else None
    probe_labels = torch.from_numpy(monitor.probe_labels()) if monitor is not None and state.probe is not None else None
    checkpoint = out_dir / "checkpoint.pt"

    def save() -> None:
        written = state.state_dict()  # every rank takes part (the augmentation streams are gathered)
        if world.main:
            atomic_save(written, checkpoint)
            store.update_run(state.run_id, checkpoint_path=str(checkpoint))

    def check_quality() -> None:
        """kNN (and probe) accuracy on the val images, rank 0 only, sized to the training time since the last pass."""
        budget = state.budget
        if monitor is None or budget is None or not world.main:
            return
        ahead = min(plan.steps_per_epoch - state.batch, plan.total - state.step)  # steps until the next pass
        result = monitor_pass(state.model.encoder, data, monitor, state.probe, plan.device, plan.precision,
                              cfg.knn_k, budget, train_views=2 * plan.batch * ahead)
        if result is None:
            if budget.note is not None:  # once per run
                console.print(f"note: {budget.note}")
                store.log_params(state.run_id, {"monitor_skipped": budget.note})
                budget.note = None
            return
        state.metrics.update({k: v for k, v in result.items() if k.endswith("_acc")})
        store.log_metrics(state.run_id, result, step=state.step, epoch=state.epoch)

    last_save = time.monotonic()
    with _StopSignals() as stop, make_progress(show_progress and world.main) as progress:
        if baseline:
            check_quality()
        if state.compiled and world.main:
            console.print("torch.compile: the first steps compile the model (a minute or more), then run faster")
        bar = progress.add_task("compiling" if state.compiled else "pretrain", total=plan.total,
                                completed=state.step, info="", ips=0.0)
        while state.epoch < cfg.epochs and state.step < plan.total:
            state.model.train()
            if state.order is None:
                state.order = torch.randperm(plan.n_images, generator=state.gen)
            while state.batch < plan.steps_per_epoch and state.step < plan.total:
                due = bool(cfg.checkpoint_minutes) and time.monotonic() - last_save >= 60 * cfg.checkpoint_minutes
                stopping, due = _sync_flags(world, plan.device, stop.requested is not None, due)
                if stopping:
                    save()
                    raise RunInterrupted(f"stopped by {stop.requested or 'another rank'} at step {state.step} of "
                                         f"{plan.total}; checkpoint saved, continue with: "
                                         f"python cli.py pretrain --resume {state.run_id}")
                start = time.perf_counter()
                value = _step(state, data, groups, probe_labels, checkpoint)
                took = time.perf_counter() - start
                if state.budget is not None:
                    state.budget.train_s += took
                ips = 2 * plan.global_batch / took  # both views count
                store.log_metrics(state.run_id, {"loss": value, "lr": float(state.scheduler.get_last_lr()[0]),
                                                 "images_per_s": ips}, step=state.step, epoch=state.epoch)
                progress.update(bar, advance=1, info=f"epoch {state.epoch + 1}/{cfg.epochs} loss {value:.3f}", ips=ips,
                                description="pretrain")
                if due and state.batch < plan.steps_per_epoch and state.step < plan.total:
                    save()
                    last_save = time.monotonic()
            if state.losses:
                state.metrics.update({"epoch_loss": float(np.mean(state.losses)), "steps": float(state.step)})
                store.log_metrics(state.run_id, {"epoch_loss": state.metrics["epoch_loss"]},
                                  step=state.step, epoch=state.epoch)
            check_quality()
            state.next_epoch()
            save()
            last_save = time.monotonic()
    return checkpoint


def _step(state: PretrainState, data: torch.Tensor, groups: torch.Tensor | None, probe_labels: torch.Tensor | None,
          checkpoint: Path) -> float:
    """One optimiser step on this rank's shard of the next global batch of the uint8 pool ``data`` ``(N, S, S)``;
    returns the loss averaged over ranks. ``groups`` ``(N,)``: subject numbers (same-subject views are not
    negatives), None: no mask. ``probe_labels`` ``(N,)``: -1 where the online probe must not train."""
    plan, cfg = state.plan, state.plan.cfg
    assert state.order is not None  # drawn at the start of every epoch
    idx = plan.shard(state.order, state.batch)
    on_data = idx.to(data.device, non_blocking=True)
    gather = gather_with_grad if plan.world.distributed else None
    loss, features = forward_loss(state.net, data[on_data], cfg.augment, cfg.temperature, state.aug_gen, plan.device,
                                  plan.precision, gather, loss_fn=nt_xent,
                                  groups=groups[on_data] if groups is not None else None)
    value = float(all_mean(loss.detach().reshape(1))[0])
    if not np.isfinite(value):
        raise NonFiniteLossError(f"loss became {value} at step {state.step}; stopped, last good checkpoint kept at "
                                 f"{checkpoint}")
    optimizer_step(loss, state.optimizer, state.scaler, state.scheduler)
    if state.probe is not None and probe_labels is not None:
        state.probe.step(features, probe_labels[idx].to(plan.device))
    state.step += 1
    state.batch += 1
    state.losses.append(value)
    return value
