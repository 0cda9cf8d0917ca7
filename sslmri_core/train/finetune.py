"""Fine-tuning: a classifier on an SSL encoder (linear probe or full), from scratch, or from a
local ImageNet (timm) weights file.

Model selection uses the validation split only; the test split is scored once, by the selected
weights. The loss is cross-entropy weighted by inverse class frequency (of the labelled images).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sslmri_core.config import (
    INITS,
    MODES,
    PRECISIONS,
    PREPROCESS,
    FinetuneConfig,
    PretrainConfig,
    check_values,
    from_dict,
    preset_settings,
    refuse_first,
    to_dict,
    with_overrides,
)
from sslmri_core.data.loading import ImageSet, load_folder
from sslmri_core.data.splits import SPLIT_UNITS, Split, label_subset, split_for
from sslmri_core.data.unusable import write_unusable
from sslmri_core.evaluation.metrics import evaluate_probs, evaluate_split
from sslmri_core.progress import console, make_progress
from sslmri_core.store.lifecycle import open_run
from sslmri_core.store.writer import RunStore
from sslmri_core.train.augment import augment_batch, normalize, to_float
from sslmri_core.train.checkpoints import atomic_save, checkpoint_of, encoder_state, load_weights
from sslmri_core.train.models import Classifier, check_model_name, create_encoder
from sslmri_core.train.optim import param_groups, warmup_cosine
from sslmri_core.train.pool import pool_index
from sslmri_core.train.predict import encode, tta_probabilities
from sslmri_core.train.result import TrainResult
from sslmri_core.train.runtime import autocast, device_name, pick_device, resolve_precision, seed_everything

EVAL_POINTS = 10  # validation passes per run (evenly spaced in steps); the best one's weights are kept


def resolve_finetune_config(store: RunStore, preset: str | None = None, **overrides: Any) -> FinetuneConfig:
    """Defaults, then the preset, then the pretraining run's model, image size and preprocessing, then
    what the user set."""
    base = with_overrides(FinetuneConfig(), **preset_settings(preset, "finetune"))
    from_run = overrides.get("from_run")
    if from_run is not None:
        parent = store.get_run_for("--from-run", from_run)
        if parent.kind != "pretrain":
            raise ValueError(f"--from-run {from_run} is a {parent.kind} run, not a pretraining run")
        pre = from_dict(PretrainConfig, parent.config)
        base = with_overrides(base, model=pre.model, image_size=pre.image_size, preprocess=pre.preprocess, init="ssl")
    elif overrides.get("init") is None:
        raise ValueError("say where the encoder starts: --from-run ID (an SSL pretraining run), --init scratch "
                         "or --init imagenet --weights PATH")
    return with_overrides(base, **overrides)


def validate_finetune(cfg: FinetuneConfig) -> None:
    """Reject impossible settings (non-finite or out-of-range numbers first) with a message naming the option."""
    check_values(cfg)
    checks = [
        (cfg.init in INITS, f"--init must be one of {', '.join(INITS)}, got {cfg.init!r}"),
        (cfg.init != "ssl" or cfg.from_run is not None, "--init ssl needs --from-run ID"),
        (cfg.init == "ssl" or cfg.from_run is None, f"--init {cfg.init} and --from-run exclude each other"),
        (cfg.init != "imagenet" or cfg.weights is not None,
         "--init imagenet needs --weights PATH (a local timm weights file; nothing is downloaded)"),
        (cfg.init == "imagenet" or cfg.weights is None, "--weights goes with --init imagenet"),
        (cfg.mode in MODES, f"--mode must be one of {', '.join(MODES)}, got {cfg.mode!r}"),
        (cfg.encoder_lr_scale > 0, f"--encoder-lr-scale must be positive, got {cfg.encoder_lr_scale}"),
        (cfg.bootstrap >= 0, f"--bootstrap must be 0 or more, got {cfg.bootstrap}"),
        (cfg.ece_bins >= 1, f"ece_bins must be at least 1, got {cfg.ece_bins}"),
        (cfg.init != "scratch" or cfg.mode == "full", "--mode linear needs a pretrained encoder (--from-run)"),
        (cfg.labels_per_class is None or cfg.labels_per_class >= 1,
         f"--labels-per-class must be at least 1, got {cfg.labels_per_class}"),
        (cfg.labels_per_class is None or cfg.label_fraction == 1.0,
         "--labels-per-class and --label-fraction exclude each other"),
        (cfg.epochs >= 1, f"--epochs must be at least 1, got {cfg.epochs}"),
        (cfg.steps is None or cfg.steps >= 1, f"--steps must be at least 1, got {cfg.steps}"),
        (cfg.min_steps >= 0, f"--min-steps must be 0 or more, got {cfg.min_steps}"),
        (cfg.split_unit in SPLIT_UNITS, f"split_unit must be one of {', '.join(SPLIT_UNITS)}, got {cfg.split_unit!r}"),
        (cfg.folds is None or cfg.fold is not None, "--folds needs the fold this run tests (fold)"),
        (cfg.image_size >= 16, f"--image-size must be at least 16, got {cfg.image_size}"),
        (cfg.batch_size >= 1, f"--batch-size must be at least 1, got {cfg.batch_size}"),
        (cfg.precision in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)}, got {cfg.precision!r}"),
        (cfg.preprocess in PREPROCESS, f"--preprocess must be one of {', '.join(PREPROCESS)}, got {cfg.preprocess!r}"),
    ]
    refuse_first(checks)
    check_model_name(cfg.model)


def load_finetune_data(cfg: FinetuneConfig) -> ImageSet:
    """The ``--data`` folder, or the built-in labelled set of ``--task``."""
    from sslmri_core.data.builtin import builtin_task_root

    root = cfg.data or str(builtin_task_root(cfg.task))
    data = load_folder(root, cfg.image_size, cfg.subject_pattern, cfg.class_map, cfg.preprocess)
    if len(data.classes) < 2:
        raise ValueError(f"{root} has {len(data.classes)} class folder(s) with usable images; need at least 2")
    return data


def split_data(data: ImageSet, cfg: FinetuneConfig) -> tuple[Split, np.ndarray]:
    """The group split (a fold of it, or the checked given split) and the labelled part of train."""
    split = split_for(data, cfg.split_seed, use_given=cfg.use_given_split, allow_leaky=cfg.allow_leaky_split,
                      unit=cfg.split_unit, folds=cfg.folds, fold=cfg.fold)
    if len(split.val) == 0 or len(split.test) == 0:
        raise ValueError(
            f"too few subjects to split {data.root} into train/val/test "
            f"(train {len(split.train)}, val {len(split.val)}, test {len(split.test)} images); "
            "a small cohort wants subject-level cross-validation: experiment --folds K"
        )
    labeled = label_subset(split.train, data.labels, split.groups, cfg.label_fraction, cfg.seed, cfg.labels_per_class)
    return split, labeled


def untrained_classes(data: ImageSet, split: Split, labeled: np.ndarray) -> list[str]:
    """Classes of the test images that no labelled training image has: the model never learns them, so
    their recall is 0 by construction (e.g. a class of one subject, tested by the fold that holds it)."""
    missing = set(data.labels[split.test].tolist()) - set(data.labels[labeled].tolist())
    return [data.classes[k] for k in sorted(missing)]


def plan_steps(cfg: FinetuneConfig, n_labeled: int) -> int:
    """Optimiser steps of a run: ``--steps``, else epochs x batches per epoch, never fewer than ``min_steps``."""
    if cfg.steps is not None:
        return cfg.steps
    return max(cfg.min_steps, cfg.epochs * math.ceil(n_labeled / cfg.batch_size))


def arm_name(cfg: FinetuneConfig) -> str:
    """The arm a run belongs to: ``ssl-linear``, ``ssl-full``, ``scratch``, ``imagenet`` (full) or
    ``imagenet-linear``."""
    if cfg.arm:
        return cfg.arm
    if cfg.init == "ssl":
        return f"ssl-{cfg.mode}"
    return cfg.init if cfg.mode == "full" else f"{cfg.init}-{cfg.mode}"


def _build_model(cfg: FinetuneConfig, n_classes: int, weights: dict[str, Any] | None) -> Classifier:
    """Classifier on a fresh encoder, loaded with the SSL (or ImageNet) encoder's weights when there are some."""
    encoder = create_encoder(cfg.model)
    if weights is not None:
        encoder.load_state_dict(weights)
    return Classifier(encoder, n_classes)


def _parent_encoder(cfg: FinetuneConfig, store: RunStore) -> dict[str, Any] | None:
    """The SSL run's (or the ``--weights`` file's) encoder weights, checked before a run is recorded;
    None when training from scratch."""
    if cfg.init == "imagenet" and cfg.weights is not None:
        from sslmri_core.train.weights import load_into_encoder

        encoder = create_encoder(cfg.model)
        load_into_encoder(encoder, cfg.weights)
        return encoder.state_dict()
    if cfg.from_run is None:
        return None
    parent = checkpoint_of(store, cfg.from_run, "--from-run", kinds=("pretrain",),
                           use="fine-tuning starts from a pretraining run")
    weights = encoder_state(parent, "--from-run")
    load_weights(create_encoder(cfg.model), weights, f"--from-run {cfg.from_run}: its encoder", f"--model {cfg.model}")
    return weights


def _split_params(data: ImageSet, split: Split, labeled: np.ndarray) -> dict[str, Any]:
    grouping = data.grouping
    return {
        "data_root": data.root,
        "classes": json.dumps(data.classes),
        "split_level": split.level,
        "split_source": split.source,
        "images_without_subject": grouping.images_without_subject if grouping else None,
        "n_train": len(split.train),
        "n_labeled": len(labeled),
        "n_val": len(split.val),
        "n_test": len(split.test),
        "n_test_groups": split.n_groups("test"),
        "n_unusable": len(data.unusable),
    }


def split_rows(data: ImageSet, split: Split, labeled: np.ndarray | None = None,
               names: list[str] | None = None) -> list[dict[str, Any]]:
    """Every image's split (or ``names``) with its content hash and group, for the store
    (``labeled`` marks the label budget inside train)."""
    names = names or split.assignment(len(data.items))
    chosen = set(labeled.tolist()) if labeled is not None else set()
    return [{"key": it.key, "subject": it.subject, "split": name, "labeled": i in chosen,
             "content_hash": it.content_hash, "group_key": split.groups[i]}
            for i, (it, name) in enumerate(zip(data.items, names, strict=True))]


def pool_overlap(store: RunStore, from_run: int, data: ImageSet, idx: np.ndarray, groups: list[str]) -> tuple[int, int]:
    """``(groups, images)`` of ``data[idx]`` that the SSL run ``from_run`` pretrained on, compared by
    content (exact or near copy), whatever their paths."""
    index = pool_index(store, from_run)
    assert data.thumbs is not None
    found = index.matches([data.items[int(i)].content_hash for i in idx], data.thumbs[idx])
    return len({groups[int(i)] for i in idx[found]}), int(found.sum())


def _announce(cfg: FinetuneConfig, run_id: int, data: ImageSet, split: Split, labeled: np.ndarray,
              device: torch.device, precision: str, steps: int, untrained: list[str]) -> None:
    console.print(
        f"finetune run {run_id}: {cfg.init}/{cfg.mode} {cfg.model} at {cfg.image_size}px, task {cfg.task}, "
        f"{len(data.classes)} classes; split by {split.level} ({split.source}): "
        f"train {len(labeled)}/{len(split.train)} labelled, val {len(split.val)}, "
        f"test {len(split.test)} images in {split.n_groups('test')} groups "
        f"({len(data.unusable)} unusable); {steps} optimiser steps on {device_name(device)}, {precision}"
    )
    if untrained:
        console.print(f"note: test class(es) {', '.join(untrained)} have no labelled training image in this "
                      "split, so the model cannot learn them (untrained_test_classes in the run's params)")
    if "test" in data.given_splits and not cfg.use_given_split and cfg.folds is None:
        console.print("note: the folder's own Training/Testing split is not used: its images are pooled and split by "
                      "group (pass --use-given-split to keep it; it is checked for leaks)")


def _class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Inverse-frequency weights ``(K,)``: ``n / (K_present * n_c)``; 0 for a class with no labelled image."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(n_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


def finetune(
    cfg: FinetuneConfig, store: RunStore, *, show_progress: bool = True, parent_run_id: int | None = None,
    data: ImageSet | None = None,
) -> TrainResult:
    """Train and evaluate a classifier as a tracked run; returns the run's result.

    ``parent_run_id`` defaults to the SSL run (``from_run``); an experiment passes its own run, and
    ``data`` (the folder already loaded with this config's settings) so it is read once per grid.
    """
    validate_finetune(cfg)
    if cfg.data is not None:  # stored absolute: the run's data is found again from any working directory
        cfg = dataclasses.replace(cfg, data=str(Path(cfg.data).expanduser().resolve()))
    encoder_weights = _parent_encoder(cfg, store)
    data = data if data is not None else load_finetune_data(cfg)
    split, labeled = split_data(data, cfg)
    device = pick_device()
    precision = resolve_precision(cfg.precision, device)
    overlap = pool_overlap(store, cfg.from_run, data, split.test, split.groups) if cfg.from_run is not None else (0, 0)
    reasons = list(split.reasons)
    if overlap[0]:
        reasons.append(f"{overlap[0]} test group(s) ({overlap[1]} images) were in the SSL pretraining pool of run "
                       f"{cfg.from_run} (compared by content)")
    steps = plan_steps(cfg, len(labeled))
    untrained = untrained_classes(data, split, labeled)
    class_weights = _class_weights(data.labels[labeled], len(data.classes)) if cfg.class_weighted else None
    parent = parent_run_id if parent_run_id is not None else cfg.from_run
    with open_run(store, "finetune", to_dict(cfg), out=cfg.out, task=cfg.task, device=device_name(device),
                  parent_run_id=parent) as run:
        run_id, out_dir = run.run_id, run.folder
        store.log_params(run_id, {
            **_split_params(data, split, labeled), "precision": precision,
            "ssl_pool_test_overlap": overlap[0], "ssl_pool_test_overlap_images": overlap[1],
            "leakage_prone": bool(reasons), "leakage_reasons": json.dumps(reasons),
            "dataset": store.save_manifest(data.manifests[0]), "optimizer_steps": steps,
            "arm": arm_name(cfg), "fraction": cfg.label_fraction, "seed": cfg.seed, "label_count": len(labeled),
            "labels_per_class": cfg.labels_per_class, "from_run": cfg.from_run, "experiment_run": cfg.experiment_run,
            "fold": cfg.fold, "folds": cfg.folds, "untrained_test_classes": json.dumps(untrained),
            "class_weights": json.dumps(None if class_weights is None else [round(float(w), 4) for w in class_weights]),
        })
        store.log_split(run_id, split_rows(data, split, labeled))
        write_unusable(out_dir, data.unusable)
        _announce(cfg, run_id, data, split, labeled, device, precision, steps, untrained)
        for reason in reasons:
            console.print(f"leakage-prone: {reason}", style="bold red")
        seed_everything(cfg.seed)  # the classifier head (and a scratch encoder) start from the run's seed
        model = _build_model(cfg, len(data.classes), encoder_weights).to(device)
        trainer = _Trainer(cfg, data, model, device, precision, class_weights)
        best_step, best_epoch = trainer.fit(labeled, split.val, store, run_id, show_progress, steps)
        metrics = _final_evaluation(trainer, data, split, store, run_id)
        metrics.update(best_epoch=float(best_epoch), best_step=float(best_step))
        store.log_metrics(run_id, {"best_epoch": float(best_epoch), "best_step": float(best_step)})
        checkpoint = out_dir / "checkpoint.pt"
        atomic_save(
            {"kind": "finetune", "run_id": run_id, "config": to_dict(cfg), "classes": data.classes,
             "best_epoch": best_epoch, "best_step": best_step, "model": model.state_dict()},
            checkpoint,
        )
        store.update_run(run_id, checkpoint_path=str(checkpoint))
    return TrainResult(run_id, "finetune", "finished", str(checkpoint), metrics, str(out_dir))


class _Trainer:
    """Training and prediction over uint8 images ``(N, S, S)`` for one classifier."""

    def __init__(
        self, cfg: FinetuneConfig, data: ImageSet, model: Classifier, device: torch.device, precision: str,
        class_weights: np.ndarray | None = None,
    ) -> None:
        self.cfg, self.model, self.device, self.precision = cfg, model, device, precision
        self.class_weights = None if class_weights is None else \
            torch.tensor(class_weights, dtype=torch.float32, device=device)
        self.images = torch.from_numpy(data.images)
        self.labels = torch.from_numpy(data.labels)
        self.classes = data.classes
        self.gen = seed_everything(cfg.seed)
        self.model.to(memory_format=torch.channels_last)
        if cfg.mode == "linear":
            for p in self.model.encoder.parameters():
                p.requires_grad_(False)
        self._features: torch.Tensor | None = None
        self._cached: dict[str, torch.Tensor] = {}  # linear mode: frozen features of val, computed once

    # -- prediction -----------------------------------------------------------------------------
    def encode(self, idx: np.ndarray, flip: bool = False) -> torch.Tensor:
        """Encoder features ``(len(idx), D)``, without augmentation (leaves the model in eval mode)."""
        self.model.eval()
        return encode(self.model.encoder, self.images, self.device, self.precision, idx, flip=flip)

    def _features_of(self, idx: np.ndarray, cache_as: str | None, flip: bool) -> torch.Tensor:
        """Features of ``idx`` (mirrored with ``flip``); a frozen encoder's are kept under ``cache_as``."""
        if cache_as is None or self.cfg.mode != "linear":
            return self.encode(idx, flip)
        key = f"{cache_as}/flip" if flip else cache_as
        if key not in self._cached:
            self._cached[key] = self.encode(idx, flip)
        return self._cached[key]

    def predict(self, idx: np.ndarray, cache_as: str | None = None) -> np.ndarray:
        """Class probabilities ``(len(idx), K)``, averaged with the mirror image's under ``tta``; with a
        frozen encoder, ``cache_as`` keeps the features."""
        return tta_probabilities(self.model, lambda flip: self._features_of(idx, cache_as, flip), self.cfg.tta)

    # -- training -------------------------------------------------------------------------------
    def _epoch_losses(self, idx: np.ndarray) -> Iterator[torch.Tensor]:
        """One shuffled pass over ``idx``: the loss of each batch (a frozen encoder's features are computed once)."""
        order = torch.randperm(len(idx), generator=self.gen)
        if self.cfg.mode == "linear":
            if self._features is None:
                self._features = self.encode(idx)
            self.model.fc.train()
            for b in range(0, len(idx), self.cfg.batch_size):
                sel = order[b : b + self.cfg.batch_size]
                logits = self.model.fc(self._features[sel].to(self.device))
                yield F.cross_entropy(logits, self.labels[idx][sel].to(self.device), weight=self.class_weights,
                                      label_smoothing=self.cfg.label_smoothing)
            return
        self.model.train()
        for b in range(0, len(idx), self.cfg.batch_size):
            sel = idx[order[b : b + self.cfg.batch_size].numpy()]
            if len(sel) < 2:
                continue  # BatchNorm cannot train on a single image
            x = to_float(self.images[sel]).to(self.device)
            x = normalize(augment_batch(x, self.cfg.augment, self.gen)).contiguous(memory_format=torch.channels_last)
            with autocast(self.device, self.precision):
                logits = self.model(x)
            yield F.cross_entropy(logits.float(), self.labels[sel].to(self.device), weight=self.class_weights,
                                  label_smoothing=self.cfg.label_smoothing)

    def _step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, scheduler: Any) -> float:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        return float(loss.item())

    def param_groups(self) -> list[dict[str, Any]]:
        """The head at ``lr``, the encoder at ``lr x encoder_lr_scale`` (no weight decay on norms and biases)."""
        cfg = self.cfg
        groups = [{**g, "lr": cfg.lr} for g in param_groups(self.model.fc, cfg.weight_decay)]
        groups += [{**g, "lr": cfg.lr * cfg.encoder_lr_scale}
                   for g in param_groups(self.model.encoder, cfg.weight_decay)]
        return [g for g in groups if g["params"]]

    def fit(self, train: np.ndarray, val: np.ndarray, store: RunStore, run_id: int, show_progress: bool,
            steps: int) -> tuple[int, int]:
        """Train for ``steps`` optimiser steps (as many passes as that takes), score val at EVAL_POINTS
        evenly spaced steps and keep the weights with the best validation balanced accuracy.
        Returns that ``(step, epoch)``."""
        cfg = self.cfg
        if cfg.mode == "full" and len(train) < 2:
            raise ValueError(f"fine-tuning needs at least 2 labelled images, got {len(train)}: raise --label-fraction")
        optimizer = torch.optim.AdamW(self.param_groups(), lr=cfg.lr)
        scheduler = warmup_cosine(optimizer, round(cfg.warmup_share * steps), steps)
        every = max(1, math.ceil(steps / EVAL_POINTS))
        best = (-1.0, 0, 0, copy.deepcopy(self.model.state_dict()))
        y_val = self.labels[val].numpy()
        step, epoch, losses = 0, 0, []
        with make_progress(show_progress) as progress:
            bar = progress.add_task(f"finetune ({cfg.init}/{cfg.mode})", total=steps, info="", ips=0.0)
            start = time.perf_counter()
            while step < steps:
                before = step
                for loss in self._epoch_losses(train):
                    losses.append(self._step(loss, optimizer, scheduler))
                    step += 1
                    if step % every and step < steps:
                        continue
                    ips = len(losses) * cfg.batch_size / (time.perf_counter() - start)
                    val_eval = evaluate_probs(y_val, self.predict(val, cache_as="val"), self.classes, "val")
                    headline = {k: val_eval.metrics[k]
                                for k in ("val_accuracy", "val_balanced_accuracy", "val_macro_f1")}
                    store.log_metrics(run_id, {"train_loss": float(np.mean(losses)), **headline},
                                      step=step, epoch=epoch)
                    if headline["val_balanced_accuracy"] > best[0]:
                        best = (headline["val_balanced_accuracy"], step, epoch,
                                copy.deepcopy(self.model.state_dict()))
                    progress.update(bar, completed=step, ips=ips, info=f"loss {np.mean(losses):.3f} "
                                    f"val bal.acc {headline['val_balanced_accuracy']:.3f}")
                    losses, start = [], time.perf_counter()
                    if step >= steps:
                        break
                if step == before:
                    raise ValueError("no batch of at least 2 images to train on: "
                                     "raise --batch-size or --label-fraction")
                epoch += 1
        self.model.load_state_dict(best[3])
        return best[1], best[2]


def _final_evaluation(
    trainer: _Trainer, data: ImageSet, split: Split, store: RunStore, run_id: int
) -> dict[str, float]:
    """Score the selected weights on val and (once) on test at slice and subject level; store metrics,
    intervals, reliability bins, ROC points, confusions and every prediction."""
    metrics: dict[str, float] = {}
    cfg = trainer.cfg
    for name, idx in (("val", split.val), ("test", split.test)):
        probs = trainer.predict(idx, cache_as=name)
        result = evaluate_split(data.labels[idx], probs, units(data, idx, split.groups), data.classes,
                                name, n_boot=cfg.bootstrap, seed=cfg.seed, n_bins=cfg.ece_bins)
        metrics.update(result.metrics)
        log_evaluation(store, run_id, data, idx, probs, result, name, split.groups)
    store.log_metrics(run_id, metrics)
    return metrics


def units(data: ImageSet, idx: np.ndarray, groups: list[str]) -> list[str]:
    """The resampling unit of each of ``data[idx]``: its subject, else its group (copies count once)."""
    return [data.items[int(i)].subject or groups[int(i)] for i in idx]


def log_evaluation(store: RunStore, run_id: int, data: ImageSet, idx: np.ndarray, probs: np.ndarray,
                   result: Any, split_name: str, groups: list[str]) -> None:
    """Store one split's confusions (slice and subject level), named results and per-scan predictions."""
    for level, matrix in result.confusion.items():
        store.log_confusion(run_id, split_name, level, data.classes, matrix.tolist())
    for key, payload in result.results.items():
        store.log_result(run_id, key, payload)
    store.log_predictions(run_id, [
        {"split": split_name, "scan": data.items[i].key, "subject": data.items[i].subject,
         "true_label": data.items[i].label, "pred_label": data.classes[int(p)],
         "confidence": float(probs[j].max()), "probs": [round(float(v), 6) for v in probs[j]],
         "group_key": groups[int(i)]}
        for j, (i, p) in enumerate(zip(idx, result.predictions, strict=True))
    ])
