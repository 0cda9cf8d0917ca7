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

from sslmri_core.augment import augment_batch, normalize, to_float
from sslmri_core.config import PretrainConfig, from_dict, to_dict
from sslmri_core.data import ImageSet, concat_sets, load_folder
from sslmri_core.losses import nt_xent
from sslmri_core.models import SimCLRModel, check_model_name, create_encoder
from sslmri_core.optim import param_groups, warmup_cosine
from sslmri_core.progress import console, make_progress
from sslmri_core.runtime import (
    PRECISIONS,
    CheckpointError,
    atomic_save,
    autocast,
    device_name,
    load_checkpoint,
    pick_device,
    resolve_precision,
    rng_state,
    run_file,
    seed_everything,
    set_rng_state,
)
from sslmri_core.splits import make_split
from sslmri_core.store import Heartbeat, RunStore, StoreError


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
    from sslmri_core.builtin import builtin_root

    if not cfg.data:
        data = load_folder(builtin_root("pretrain"), cfg.image_size, cfg.subject_pattern)
        return data, ["pool"] * len(data.items)
    sets, roles = [], []
    for root in cfg.data:
        data = load_folder(root, cfg.image_size, cfg.subject_pattern)
        role = ["pool"] * len(data.items)
        if cfg.exclude_test:
            use_given = any(data.given_splits)
            split = make_split(data.labels, data.subjects, data.given_splits, cfg.split_seed, use_given, data.hashes)
            for i in split.test:
                role[int(i)] = "excluded"
        sets.append(data)
        roles.extend(role)
    return concat_sets(sets), roles


def write_unusable(out_dir: Path, unusable: list[tuple[str, str]]) -> None:
    """Keep the list of files that were not used, with their reasons, beside the run's outputs."""
    if unusable:
        out_dir.mkdir(parents=True, exist_ok=True)
        lines = ["path\treason"] + [f"{p}\t{r}" for p, r in unusable]
        (out_dir / "unusable.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def pretrain(cfg: PretrainConfig, store: RunStore, *, show_progress: bool = True) -> TrainResult:
    """Run SimCLR pretraining as a tracked run; returns the run's result."""
    validate_pretrain(cfg)
    found, roles = load_pretrain_data(cfg)
    pool = np.array([i for i, r in enumerate(roles) if r == "pool"], dtype=np.int64)
    if len(pool) < 2:
        raise ValueError(f"pretraining needs at least 2 usable images, found {len(pool)}")
    device = pick_device()
    precision = resolve_precision(cfg.precision, device)
    run_id = store.start_run("pretrain", to_dict(cfg), device=device_name(device))
    out_dir = Path(cfg.out).resolve() / f"run-{run_id}"
    store.update_run(run_id, out_dir=str(out_dir))
    n_excluded = len(roles) - len(pool)
    store.log_params(run_id, {
        "n_images": len(pool), "n_excluded_test": n_excluded, "n_unusable": len(found.unusable),
        "precision": precision, "data_roots": found.root,
        "datasets": ",".join(str(store.save_manifest(m)) for m in found.manifests),
        "pool": "built-in pretraining subjects" if not cfg.data else
        ("without each folder's test split" if cfg.exclude_test else "all images, test splits included"),
    })
    store.log_split(run_id, [{"key": it.key, "subject": it.subject, "split": role, "labeled": False}
                             for it, role in zip(found.items, roles)])
    write_unusable(out_dir, found.unusable)
    console.print(
        f"pretrain run {run_id}: {len(pool)} images ({n_excluded} test images left out, "
        f"{len(found.unusable)} unusable files) from {found.root}; "
        f"{cfg.model} at {cfg.image_size}px on {device_name(device)}, {precision}"
    )
    with store.track(run_id):
        metrics, checkpoint = _train(cfg, found.images[pool], store, run_id, out_dir, device, precision, show_progress,
                                     _pool_hash(found.items, pool))
    return TrainResult(run_id, "pretrain", "finished", str(checkpoint), metrics, str(out_dir))


def _pool_hash(items: list[Any], pool: np.ndarray) -> str:
    """Fingerprint of the pretraining pool in order: a resumed run must see the same images at the same indices."""
    return hashlib.sha256("\n".join(items[int(i)].key for i in pool).encode()).hexdigest()


def resume_pretrain(run_id: int, store: RunStore, *, show_progress: bool = True) -> TrainResult:
    """Continue an interrupted (or failed, or killed) pretraining run from its last checkpoint.

    The run keeps its id, config and metric series: points logged after the checkpoint are
    dropped and logged again, so each step appears once. Refused while the run is alive.
    """
    try:
        record = store.get_run(run_id)
    except StoreError as exc:
        raise ValueError(f"--resume {run_id}: {exc}") from None
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
    state = None
    if record.checkpoint_path:
        state = load_checkpoint(run_file(record.checkpoint_path, record.out_dir, "checkpoint"))
        if state.get("kind") != "pretrain" or state.get("run_id") != run_id:
            raise CheckpointError(f"--resume {run_id}: {record.checkpoint_path} is not this run's checkpoint")
    found, roles = load_pretrain_data(cfg)
    pool = np.array([i for i, r in enumerate(roles) if r == "pool"], dtype=np.int64)
    pool_hash = _pool_hash(found.items, pool)
    stored_pool = sum(1 for split in store.split_of(run_id).values() if split == "pool")
    if (state is not None and state.get("pool_hash", pool_hash) != pool_hash) or stored_pool != len(pool):
        raise ValueError(f"--resume {run_id}: the data changed since the run started ({stored_pool} images in its "
                         f"pool, {len(pool)} now); start a new run instead")
    device = pick_device()
    precision = resolve_precision(cfg.precision, device)
    if not store.reopen_run(run_id):
        raise ValueError(f"--resume {run_id}: another process has just resumed or is running it")
    done = int(state["step"]) if state is not None else 0
    dropped = store.truncate_metrics(run_id, done)
    store.log_params(run_id, {"resumed_from_step": done})
    out_dir = Path(record.out_dir)
    console.print(
        f"resuming pretrain run {run_id} at step {done} ({dropped} metric points after the checkpoint dropped); "
        f"{len(pool)} images, {cfg.model} at {cfg.image_size}px on {device_name(device)}, {precision}"
    )
    with store.track(run_id):
        metrics, checkpoint = _train(cfg, found.images[pool], store, run_id, out_dir, device, precision, show_progress,
                                     pool_hash, resume=state)
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
) -> tuple[dict[str, float], Path]:
    """The SimCLR loop over uint8 images ``(N, S, S)``; checkpoints every epoch (and see module docs)."""
    gen = seed_everything(cfg.seed)
    data = torch.from_numpy(images)
    n = len(data)
    batch = min(cfg.batch_size, n)
    steps_per_epoch = max(1, n // batch)
    total = cfg.epochs * steps_per_epoch if cfg.max_steps is None else min(cfg.max_steps, cfg.epochs * steps_per_epoch)
    model = SimCLRModel(create_encoder(cfg.model), cfg.proj_hidden_dim, cfg.proj_dim).to(device)
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)
    scheduler = warmup_cosine(optimizer, int(cfg.warmup_epochs * steps_per_epoch), total)
    checkpoint = out_dir / "checkpoint.pt"
    # Where the loop stands: the next epoch and batch, that epoch's order, the losses of its steps so far.
    step, epoch, first_batch, order, losses, metrics = 0, 0, 0, None, [], {}
    if resume is not None:
        model.encoder.load_state_dict(resume["encoder"])
        model.head.load_state_dict(resume["head"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        step, metrics = int(resume["step"]), dict(resume.get("metrics", {}))
        position = resume.get("position") or {"epoch": int(resume["epoch"]) + 1, "batch": 0, "order": None, "losses": []}
        epoch, first_batch, order, losses = position["epoch"], position["batch"], position["order"], list(position["losses"])
        if "rng" in resume:
            set_rng_state(resume["rng"], gen)

    def save() -> None:
        atomic_save({
            "kind": "pretrain", "run_id": run_id, "config": to_dict(cfg), "epoch": epoch - 1, "step": step,
            "encoder": model.encoder.state_dict(), "head": model.head.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "position": {"epoch": epoch, "batch": first_batch, "order": order, "losses": list(losses)},
            "rng": rng_state(gen), "pool_hash": pool_hash, "metrics": dict(metrics), "total": total,
        }, checkpoint)
        store.update_run(run_id, checkpoint_path=str(checkpoint))

    beat = Heartbeat(store, run_id)
    last_save = time.monotonic()
    with _StopSignals() as stop, make_progress(show_progress) as progress:
        bar = progress.add_task("pretrain", total=total, completed=step, info="", ips=0.0)
        while epoch < cfg.epochs and step < total:
            model.train()
            if order is None:
                order = torch.randperm(n, generator=gen)
            while first_batch < steps_per_epoch and step < total:
                if stop.requested:
                    save()
                    raise RunInterrupted(f"stopped by {stop.requested} at step {step} of {total}; checkpoint saved, "
                                         f"continue with: python cli.py pretrain --resume {run_id}")
                b = first_batch
                start = time.perf_counter()
                x = to_float(data[order[b * batch : (b + 1) * batch]]).to(device)
                views = torch.cat([augment_batch(x, cfg.augment, gen), augment_batch(x, cfg.augment, gen)])
                views = normalize(views).contiguous(memory_format=torch.channels_last)
                with autocast(device, precision):
                    z = model(views)
                loss = nt_xent(z[: len(x)], z[len(x) :], cfg.temperature)
                if not torch.isfinite(loss):
                    raise NonFiniteLossError(
                        f"loss became {loss.item()} at step {step}; stopped, last good checkpoint kept at {checkpoint}"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                step += 1
                first_batch += 1
                ips = 2 * len(x) / (time.perf_counter() - start)  # both views count
                losses.append(loss.item())
                store.log_metrics(
                    run_id, {"loss": losses[-1], "lr": scheduler.get_last_lr()[0], "images_per_s": ips},
                    step=step, epoch=epoch,
                )
                beat()
                progress.update(bar, advance=1, info=f"epoch {epoch + 1}/{cfg.epochs} loss {losses[-1]:.3f}", ips=ips)
                if (cfg.checkpoint_minutes and first_batch < steps_per_epoch and step < total
                        and time.monotonic() - last_save >= 60 * cfg.checkpoint_minutes):
                    save()
                    last_save = time.monotonic()
            if losses:
                metrics = {"epoch_loss": float(np.mean(losses)), "steps": float(step)}
                store.log_metrics(run_id, {"epoch_loss": metrics["epoch_loss"]}, step=step, epoch=epoch)
            epoch, first_batch, order, losses = epoch + 1, 0, None, []
            save()
            last_save = time.monotonic()
    return metrics, checkpoint
