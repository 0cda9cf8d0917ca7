"""SimCLR pretraining: two augmented views per image, one forward pass, NT-Xent."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sslmri_core.augment import augment_batch, normalize, to_float
from sslmri_core.config import PretrainConfig, to_dict
from sslmri_core.data import ImageSet, concat_sets, load_folder
from sslmri_core.losses import nt_xent
from sslmri_core.models import SimCLRModel, check_model_name, create_encoder
from sslmri_core.optim import param_groups, warmup_cosine
from sslmri_core.progress import console, make_progress
from sslmri_core.runtime import atomic_save, autocast, device_name, pick_device, resolve_precision, seed_everything
from sslmri_core.splits import make_split
from sslmri_core.store import RunStore


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


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
        metrics, checkpoint = _train(cfg, found.images[pool], store, run_id, out_dir, device, precision, show_progress)
    return TrainResult(run_id, "pretrain", "finished", str(checkpoint), metrics, str(out_dir))


def _train(
    cfg: PretrainConfig,
    images: np.ndarray,
    store: RunStore,
    run_id: int,
    out_dir: Path,
    device: torch.device,
    precision: str,
    show_progress: bool,
) -> tuple[dict[str, float], Path]:
    """The SimCLR loop over uint8 images ``(N, S, S)``; checkpoints every epoch."""
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
    step, metrics = 0, {}
    with make_progress(show_progress) as progress:
        bar = progress.add_task("pretrain", total=total, info="", ips=0.0)
        for epoch in range(cfg.epochs):
            if step >= total:
                break
            model.train()
            order = torch.randperm(n, generator=gen)
            losses = []
            for b in range(steps_per_epoch):
                if step >= total:
                    break
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
                ips = 2 * len(x) / (time.perf_counter() - start)  # both views count
                losses.append(loss.item())
                store.log_metrics(
                    run_id, {"loss": losses[-1], "lr": scheduler.get_last_lr()[0], "images_per_s": ips},
                    step=step, epoch=epoch,
                )
                progress.update(bar, advance=1, info=f"epoch {epoch + 1}/{cfg.epochs} loss {losses[-1]:.3f}", ips=ips)
            metrics = {"epoch_loss": float(np.mean(losses)), "steps": float(step)}
            store.log_metrics(run_id, {"epoch_loss": metrics["epoch_loss"]}, step=step, epoch=epoch)
            _save(checkpoint, model, optimizer, scheduler, cfg, run_id, epoch, step)
            store.update_run(run_id, checkpoint_path=str(checkpoint))
    return metrics, checkpoint


def _save(
    path: Path,
    model: SimCLRModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    cfg: PretrainConfig,
    run_id: int,
    epoch: int,
    step: int,
) -> None:
    """Atomic checkpoint with everything needed to fine-tune from it (and, later, to resume)."""
    atomic_save(
        {
            "kind": "pretrain",
            "run_id": run_id,
            "config": to_dict(cfg),
            "epoch": epoch,
            "step": step,
            "encoder": model.encoder.state_dict(),
            "head": model.head.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
        },
        path,
    )
