"""Starting training from the command line: ``pretrain`` (also under ``torchrun``), ``finetune``, ``augment-preview``.

Each command function takes the command's options by their ``cli.py`` names; ``None`` means not
given, so the defaults in :mod:`sslmri_core.config` apply (:func:`~sslmri_core.config.with_overrides`
drops Nones). Results are printed for people on stderr and, with ``json_out``, as one JSON line on
stdout. torch is imported only when a command runs.

Under ``torchrun --nproc_per_node N cli.py pretrain ...`` every process runs :func:`pretrain`:
:func:`join_world` joins the process group and opens the store (rank 0 first, so it alone upgrades
the schema); only rank 0 prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sslmri_core.output import print_json, print_metrics, result_dict

if TYPE_CHECKING:
    from sslmri_core.store.writer import RunStore
    from sslmri_core.train.distributed import World


def join_world(db: str | None) -> tuple[World, RunStore]:
    """This process's place under ``torchrun`` (a single process without it) and the run store.

    Rank 0 opens the store first, upgrading its schema if needed, while the other ranks wait at a
    barrier; they then open it without upgrading.
    """
    from sslmri_core.store.writer import RunStore
    from sslmri_core.train.distributed import barrier, init_world

    world = init_world()  # a no-op unless started by torchrun
    if not world.main:
        barrier()  # rank 0 migrates the store first
        return world, RunStore(db, upgrade=False)
    store = RunStore(db)
    if world.distributed:
        barrier()
    return world, store


def pretrain(*, data: list[Path] | None, unlabeled: list[Path] | None, preset: str | None, preprocess: str | None,
             model: str | None, image_size: int | None, batch_size: int | None,
             epochs: int | None, max_steps: int | None, optimizer: str | None, lr: float | None,
             weight_decay: float | None, warmup_epochs: float | None, temperature: float | None,
             mask_same_subject: bool | None, monitor_share: float | None, compile: str | None,
             proj_hidden_dim: int | None, proj_dim: int | None, augment: str | None, precision: str | None,
             monitor: bool | None, subject_pattern: str | None, exclude_test: bool | None, exclude_val: bool | None,
             split_seed: int | None, use_given_split: bool | None, class_map: str | None, seed: int | None,
             checkpoint_minutes: float | None, resume: int | None, db: str | None, out: Path | None,
             json_out: bool, progress: bool) -> None:
    """``pretrain``: a new SimCLR run from the options, or ``resume`` a stored one with its own settings."""
    from sslmri_core.config import AugmentConfig, PretrainConfig, parse_settings, preset_settings, with_overrides
    from sslmri_core.data.sources import parse_class_map
    from sslmri_core.train.distributed import leave_world
    from sslmri_core.train.pretrain import pretrain as run_pretrain
    from sslmri_core.train.pretrain import resume_pretrain, validate_pretrain

    overrides: dict[str, Any] = dict(
        data=[str(d) for d in data] if data else None, unlabeled=[str(d) for d in unlabeled] if unlabeled else None,
        preset=preset, preprocess=preprocess, model=model, image_size=image_size,
        batch_size=batch_size, epochs=epochs, max_steps=max_steps, optimizer=optimizer, lr=lr,
        weight_decay=weight_decay, warmup_epochs=warmup_epochs, temperature=temperature,
        mask_same_subject=mask_same_subject, monitor_share=monitor_share, compile=compile,
        proj_hidden_dim=proj_hidden_dim, proj_dim=proj_dim,
        augment=parse_settings(AugmentConfig(), augment, "--augment") if augment else None,
        precision=precision, monitor=monitor, subject_pattern=subject_pattern, seed=seed,
        out=str(out) if out else None, exclude_test=exclude_test, exclude_val=exclude_val, split_seed=split_seed,
        checkpoint_minutes=checkpoint_minutes, use_given_split=use_given_split,
        class_map=parse_class_map(class_map) or None,
    )
    if resume is not None:
        given = ["--" + k.replace("_", "-") for k, v in overrides.items() if v is not None]
        if given:
            raise ValueError(f"--resume {resume} continues the run with its stored settings; "
                             f"leave out {', '.join(given)}")
    cfg = with_overrides(with_overrides(PretrainConfig(), **preset_settings(preset, "pretrain")), **overrides)
    if resume is None:
        validate_pretrain(cfg)  # before the store is opened: a bad option never touches it
    world, store = join_world(db)
    if resume is not None:
        result = resume_pretrain(resume, store, show_progress=progress)
    else:
        result = run_pretrain(cfg, store, show_progress=progress)
    if world.main:
        print_metrics(f"pretrain run {result.run_id} finished", result.metrics)
        if json_out:
            print_json(result_dict(result))
    if world.distributed:
        leave_world()


def augment_preview(*, out_png: Path, data: Path | None, n: int, image_size: int | None, augment: str | None,
                    seed: int, json_out: bool) -> None:
    """``augment-preview``: a grid of augmented SimCLR pairs (original | view 1 | view 2 per row) in ``out_png``."""
    import click

    from sslmri_core.config import AugmentConfig, PretrainConfig, check_values, parse_settings, with_overrides
    from sslmri_core.train.preview import write_preview

    if n < 1:
        raise ValueError(f"--n must be at least 1, got {n}")
    if out_png.suffix.lower() != ".png":
        raise ValueError(f"OUT.png must end in .png, got {out_png}")
    cfg = with_overrides(PretrainConfig(), data=[str(data)] if data else None, image_size=image_size,
                         augment=parse_settings(AugmentConfig(), augment, "--augment") if augment else None)
    check_values(cfg)
    summary = write_preview(cfg, out_png, n, seed)
    click.echo(f"wrote {summary['pairs']} augmented pairs to {summary['path']}", err=True)
    if json_out:
        print_json(summary)


def finetune(*, task: str | None, data: Path | None, preset: str | None, preprocess: str | None,
             label_smoothing: float | None, tta: bool | None, from_run: int | None, init: str | None,
             weights: Path | None,
             encoder_lr_scale: float | None, class_weighted: bool | None, bootstrap: int | None, model: str | None,
             image_size: int | None, batch_size: int | None, mode: str | None, label_fraction: float | None,
             labels_per_class: int | None, use_given_split: bool | None, allow_leaky_split: bool | None,
             split_seed: int | None, class_map: str | None, epochs: int | None, steps: int | None,
             min_steps: int | None, lr: float | None, weight_decay: float | None, precision: str | None,
             augment: str | None, subject_pattern: str | None, seed: int | None, db: str | None, out: Path | None,
             json_out: bool, progress: bool) -> None:
    """``finetune``: resolve the config (defaults, the pretraining run's, the options), train, score on test."""
    from sslmri_core.config import (
        FinetuneConfig,
        check_values,
        parse_settings,
        preset_settings,
        with_overrides,
    )
    from sslmri_core.data.sources import parse_class_map
    from sslmri_core.store.writer import RunStore
    from sslmri_core.train.finetune import finetune as run_finetune
    from sslmri_core.train.finetune import resolve_finetune_config

    overrides: dict[str, Any] = dict(
        task=task, data=str(data) if data else None, from_run=from_run, init=init, model=model,
        image_size=image_size, batch_size=batch_size, mode=mode, label_fraction=label_fraction, epochs=epochs,
        lr=lr, precision=precision, subject_pattern=subject_pattern, seed=seed, out=str(out) if out else None,
        labels_per_class=labels_per_class, use_given_split=use_given_split, split_seed=split_seed,
        class_map=parse_class_map(class_map) or None, weights=str(weights) if weights else None,
        encoder_lr_scale=encoder_lr_scale, class_weighted=class_weighted, bootstrap=bootstrap,
        allow_leaky_split=allow_leaky_split, steps=steps, min_steps=min_steps, preprocess=preprocess,
        label_smoothing=label_smoothing, tta=tta, weight_decay=weight_decay,
    )
    recipe = with_overrides(FinetuneConfig(), **preset_settings(preset, "finetune"))  # an unknown preset: refused
    if augment:  # only the named settings change, on the preset's augmentation (else the default)
        overrides["augment"] = parse_settings(recipe.augment, augment, "--augment")
    check_values(with_overrides(FinetuneConfig(), **overrides))  # before the store is opened
    store = RunStore(db)
    result = run_finetune(resolve_finetune_config(store, preset, **overrides), store, show_progress=progress)
    print_metrics(f"finetune run {result.run_id} finished", result.metrics)
    if json_out:
        print_json(result_dict(result))
