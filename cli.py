"""sslmri command line: data, pretrain, finetune, runs, db, demo.

Kept thin: every command parses options, then imports the library lazily (torch and timm take
seconds to import, ``--help`` must not), calls one function and prints the result. Options left
unset are passed as ``None`` and never override the defaults in ``sslmri_core/config.py``.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional, TypeVar

import typer

T = TypeVar("T")

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Self-supervised MRI: pretrain, finetune, compare.")
data_app = typer.Typer(no_args_is_help=True, help="Data sets: the built-in synthetic MRI.")
runs_app = typer.Typer(no_args_is_help=True, help="Runs in the run store.")
db_app = typer.Typer(no_args_is_help=True, help="The run store's schema.")
app.add_typer(data_app, name="data")
app.add_typer(runs_app, name="runs")
app.add_typer(db_app, name="db")

DB_HELP = "Run store URL (default: $SSLMRI_DB or sqlite:///runs.db)."
GIVEN_HELP = "Honour the folder's Training/Testing split (refused when a subject or copy sits on both sides)."
LEAKY_HELP = "Keep a given split even though groups cross it; the run is recorded as leakage-prone."
JSON_HELP = "Print one JSON object as the last line of stdout."


def _fail(message: str, code: int) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _guarded(action: Callable[[], T]) -> T:
    """Run a command body; user errors become one line on stderr (exit 2), crashes exit 1."""
    from sslmri_core.data.loading import DataError
    from sslmri_core.store.writer import StoreError

    try:
        return action()
    except (ValueError, DataError, StoreError, FileNotFoundError) as exc:
        if exc.__class__.__name__ == "NonFiniteLossError":
            _fail(str(exc), 1)
        _fail(str(exc), 2)
    except KeyboardInterrupt as exc:
        _fail(f"{exc or 'interrupted'} (the run is marked interrupted)", 130)
    except typer.Exit:
        raise
    except Exception as exc:
        if os.environ.get("SSLMRI_DEBUG"):
            raise
        _fail(f"{exc.__class__.__name__}: {exc} (set SSLMRI_DEBUG=1 for a traceback)", 1)
    raise AssertionError("unreachable")


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _print_json(obj: Any) -> None:
    sys.stdout.flush()
    typer.echo(json.dumps(_jsonable(obj), default=str))


def _result_dict(result: Any) -> dict[str, Any]:
    return {"run_id": result.run_id, "kind": result.kind, "status": result.status,
            "checkpoint": result.checkpoint, "out_dir": result.out_dir, "metrics": result.metrics}


def _print_metrics(title: str, metrics: dict[str, float]) -> None:
    from rich.table import Table

    from sslmri_core.progress import console

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        if "/" not in key:  # per-class metrics are in the store and in --json
            table.add_row(key, f"{value:.4f}")
    console.print(table)


# ---------------------------------------------------------------------------------------------
@data_app.command("synth")
def data_synth(
    out: Path = typer.Argument(..., help="Folder to write <task>/<class>/<subject>_slice-<z>.png into."),
    task: Optional[str] = typer.Option(None, help="tumor | alzheimer | parkinsons | ms | all"),
    subjects: Optional[int] = typer.Option(None, help="Synthetic subjects per class."),
    slices_per_subject: Optional[int] = typer.Option(None, help="Axial slices per subject."),
    size: Optional[int] = typer.Option(None, help="Image side in pixels."),
    seed: Optional[int] = typer.Option(None, help="Random seed (same seed, same files)."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Write the built-in synthetic brain-MRI set (from the MNI152 template nilearn ships)."""

    def action() -> None:
        from sslmri_core.config import TASKS, SynthConfig, with_overrides
        from sslmri_core.data.builtin import generate_with_progress
        from sslmri_core.progress import console

        cfg = with_overrides(SynthConfig(), task=task, subjects=subjects, slices_per_subject=slices_per_subject,
                             size=size, seed=seed)
        if cfg.task != "all" and cfg.task not in TASKS:
            raise ValueError(f"--task must be one of {', '.join([*TASKS, 'all'])}, got {cfg.task!r}")
        for name, value, low in (("--subjects", cfg.subjects, 1), ("--slices-per-subject", cfg.slices_per_subject, 1),
                                 ("--size", cfg.size, 16)):
            if value < low:
                raise ValueError(f"{name} must be at least {low}, got {value}")
        summary = generate_with_progress(out, cfg)
        console.print(f"wrote {summary.images} images of {summary.subjects} subjects to {out} in {summary.seconds:.1f}s")
        if json_out:
            _print_json({"out": str(summary.out), "tasks": summary.tasks, "subjects": summary.subjects,
                         "images": summary.images, "seconds": summary.seconds})

    _guarded(action)


def _print_check(report: dict[str, Any]) -> None:
    from rich.table import Table

    from sslmri_core.progress import console

    table = Table(title=f"{report['root']}: {report['usable']} of {report['files']} files usable, {report['images']} images")
    table.add_column("class")
    table.add_column("images", justify="right")
    for name, count in report["classes"].items():
        table.add_row(name, str(count))
    console.print(table)
    if report["split_level"] == "subject":
        console.print(f"subjects: {report['subjects']} (pattern: {report['subject_pattern']}); splits are by subject")
    else:
        console.print("[bold red]no subject ids in the file names: splits will be image-level (leakage-prone); "
                      "pass --subject-pattern REGEX if the names carry one[/]")
    if report["given_split"]:
        console.print(f"given split folders: {report['given_split']} (honour them with --use-given-split)")
    for note in report["notes"]:
        console.print(f"note: {note}")
    for item in report["unusable"][:20]:
        console.print(f"[yellow]unusable[/] {item['path']}: {item['reason']}")
    if len(report["unusable"]) > 20:
        console.print(f"... and {len(report['unusable']) - 20} more unusable files (see --json or --export)")


@data_app.command("check")
def data_check(
    folder: Path = typer.Argument(..., help="Data folder: ROOT/<class>/... images or NIfTI volumes."),
    subject_pattern: Optional[str] = typer.Option(None, help="Regex for the subject id in file names."),
    class_map: Optional[str] = typer.Option(None, help="Rename or merge classes: 'glioma=tumour,meningioma=tumour'."),
    image_size: Optional[int] = typer.Option(None, help="Cache images at this size (default 128)."),
    export: Optional[Path] = typer.Option(None, help="Write the manifest to this .csv or .parquet file."),
    db: Optional[str] = typer.Option(None, help=DB_HELP),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Build the manifest (and image cache): counts per class, subjects, and every unusable file with its reason."""

    def action() -> None:
        from sslmri_core.config import FinetuneConfig
        from sslmri_core.data.ingest import build_manifest
        from sslmri_core.progress import console
        from sslmri_core.data.sources import parse_class_map
        from sslmri_core.store.writer import RunStore

        manifest, _ = build_manifest(folder, image_size or FinetuneConfig().image_size, subject_pattern,
                                     parse_class_map(class_map), progress=None)
        report = manifest.check_summary()
        report["dataset_id"] = RunStore(db).save_manifest(manifest) if manifest.rows else None
        if export:
            console.print(f"manifest written to {manifest.export(export)}")
        _print_check(report)
        if json_out:
            _print_json(report)
        if not report["usable"]:
            _fail(f"no usable images in {folder} ({report['files']} files found)", 1)

    _guarded(action)


@data_app.command("audit")
def data_audit(
    folder: Path = typer.Argument(..., help="Data folder: ROOT/<class>/... images or NIfTI volumes."),
    subject_pattern: Optional[str] = typer.Option(None, help="Regex for the subject id in file names."),
    split_seed: Optional[int] = typer.Option(None, help="Seed of the group split checked for cross-split leaks."),
    use_given_split: bool = typer.Option(False, "--use-given-split", help="Check the folder's own Training/Testing split instead of sslmri's."),
    near_threshold: int = typer.Option(4, help="Perceptual-hash distance (of 64 bits) that counts as a near-duplicate."),
    db: Optional[str] = typer.Option(None, help=DB_HELP),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Duplicates, near-duplicates, subject leaks across splits, acquisition confounds, class balance."""

    def action() -> None:
        from sslmri_core.data.audit import audit_dataset
        from sslmri_core.config import FinetuneConfig
        from sslmri_core.data.loading import load_folder
        from sslmri_core.data.groups import GROUP_SIZE
        from sslmri_core.progress import console
        from sslmri_core.data.splits import split_for
        from sslmri_core.store.writer import RunStore

        defaults = FinetuneConfig()
        data = load_folder(folder, GROUP_SIZE, subject_pattern)  # the decode the split's groups use
        manifest = data.manifests[0]
        split_of = None
        if not use_given_split:  # check the split sslmri itself draws (given split folders are the default's input only)
            split = split_for(data, split_seed if split_seed is not None else defaults.split_seed)
            split_of = dict(zip((it.key for it in data.items), split.assignment(len(data.items))))
        report = audit_dataset(manifest, data.images, split_of, near_threshold=near_threshold)
        store = RunStore(db)
        dataset_id = store.save_manifest(manifest)
        details = report.to_json()
        summary = {**report.summary, "dataset_id": dataset_id,
                   "audit_id": store.save_audit(dataset_id, report.summary, details)}
        console.print_json(json.dumps(_jsonable(summary), default=str))
        if json_out:
            _print_json(summary)

    _guarded(action)


@app.command()
def pretrain(
    data: Optional[list[Path]] = typer.Option(None, "--data", help="Image folder(s) ROOT/<class>/...; labels only monitor. Default: built-in set."),
    model: Optional[str] = typer.Option(None, help="Any timm model name (default resnet50)."),
    image_size: Optional[int] = typer.Option(None, help="Training image side in pixels (default 128)."),
    batch_size: Optional[int] = typer.Option(None, help="Images per step and process; each gives two views (default 32)."),
    epochs: Optional[int] = typer.Option(None, help="Passes over the data (default 10)."),
    max_steps: Optional[int] = typer.Option(None, help="Stop after this many steps in total."),
    optimizer: Optional[str] = typer.Option(None, help="auto | lars | adamw | sgd (auto: LARS from a global batch of 256)."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate (default: 0.3 x batch/256 LARS, 1e-3 AdamW)."),
    weight_decay: Optional[float] = typer.Option(None, help="Weight decay on weights, never norms/biases (default 1e-6)."),
    warmup_epochs: Optional[float] = typer.Option(None, help="Linear warm-up epochs before the cosine decay (default 1)."),
    temperature: Optional[float] = typer.Option(None, help="NT-Xent temperature (default 0.2)."),
    proj_hidden_dim: Optional[int] = typer.Option(None, help="Projection head hidden size (default 512)."),
    proj_dim: Optional[int] = typer.Option(None, help="Projection head output size (default 128)."),
    augment: Optional[str] = typer.Option(None, help="Augmentation settings, e.g. 'bias_field=0.3,rotate_deg=15'."),
    precision: Optional[str] = typer.Option(None, help="auto | bf16 | fp16 | fp32 (auto: bf16 where supported, fp16 on older GPUs)."),
    monitor: Optional[bool] = typer.Option(None, "--monitor/--no-monitor",
                                           help="Per-epoch kNN and linear-probe accuracy when the folders have classes (default on)."),
    subject_pattern: Optional[str] = typer.Option(None, help="Regex for the subject id in file names."),
    exclude_test: Optional[bool] = typer.Option(None, "--exclude-test/--include-test",
                                                help="Leave each --data folder's test split out of the pool (default)."),
    exclude_val: Optional[bool] = typer.Option(None, "--exclude-val/--include-val",
                                               help="Also leave the val split out (train subjects only; val stays the kNN queries)."),
    split_seed: Optional[int] = typer.Option(None, help="Seed of the group split whose test part is left out."),
    use_given_split: Optional[bool] = typer.Option(None, "--use-given-split", help="Leave out the folder's own Testing split instead (checked like finetune's)."),
    class_map: Optional[str] = typer.Option(None, help="The class map fine-tuning will use (classes stratify the split left out)."),
    seed: Optional[int] = typer.Option(None, help="Random seed."),
    checkpoint_minutes: Optional[float] = typer.Option(
        None, help="Also checkpoint mid-epoch after this many minutes (default 10; 0: epoch ends only)."),
    resume: Optional[int] = typer.Option(
        None, help="Continue this interrupted (or killed, or failed) pretraining run from its last checkpoint."),
    db: Optional[str] = typer.Option(None, help=DB_HELP),
    out: Optional[Path] = typer.Option(None, help="Folder for run outputs and checkpoints (default runs/)."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """SimCLR self-supervised pretraining of an encoder on unlabeled MRI slices.

    Multi-GPU / multi-node: torchrun --nproc_per_node N cli.py pretrain ... (rank 0 writes the store).
    """

    def action() -> None:
        from sslmri_core.config import AugmentConfig, PretrainConfig, parse_settings, with_overrides
        from sslmri_core.train.distributed import init_world
        from sslmri_core.train.pretrain import pretrain as run_pretrain
        from sslmri_core.train.pretrain import resume_pretrain
        from sslmri_core.data.sources import parse_class_map
        from sslmri_core.store.writer import RunStore

        overrides = dict(
            data=[str(d) for d in data] if data else None, model=model, image_size=image_size,
            batch_size=batch_size, epochs=epochs, max_steps=max_steps, optimizer=optimizer, lr=lr,
            weight_decay=weight_decay, warmup_epochs=warmup_epochs, temperature=temperature,
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
        world = init_world()  # a no-op unless started by torchrun
        if not world.main:
            from sslmri_core.train.distributed import barrier

            barrier()  # rank 0 migrates the store first
            store = RunStore(db, upgrade=False)
        else:
            store = RunStore(db)
            if world.distributed:
                from sslmri_core.train.distributed import barrier

                barrier()
        if resume is not None:
            result = resume_pretrain(resume, store, show_progress=progress)
        else:
            result = run_pretrain(with_overrides(PretrainConfig(), **overrides), store, show_progress=progress)
        if world.main:
            _print_metrics(f"pretrain run {result.run_id} finished", result.metrics)
            if json_out:
                _print_json(_result_dict(result))
        if world.distributed:
            from sslmri_core.train.distributed import leave_world

            leave_world()

    _guarded(action)


@app.command("augment-preview")
def augment_preview(
    out_png: Path = typer.Argument(..., metavar="OUT.png", help="Where to write the grid (PNG)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Image folder ROOT/<class>/...; default: built-in pretraining set."),
    n: int = typer.Option(8, "--n", help="Images shown (one row each: original, view 1, view 2)."),
    image_size: Optional[int] = typer.Option(None, help="Image side in pixels (default 128)."),
    augment: Optional[str] = typer.Option(None, help="Augmentation settings, e.g. 'bias_field=0.3,rotate_deg=15'."),
    seed: int = typer.Option(0, help="Random seed: the same seed gives the same grid."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Write a grid of augmented SimCLR pairs (original | view 1 | view 2 per row) to OUT.png."""

    def action() -> None:
        from sslmri_core.config import AugmentConfig, PretrainConfig, parse_settings, with_overrides
        from sslmri_core.train.preview import write_preview

        if n < 1:
            raise ValueError(f"--n must be at least 1, got {n}")
        if out_png.suffix.lower() != ".png":
            raise ValueError(f"OUT.png must end in .png, got {out_png}")
        cfg = with_overrides(PretrainConfig(), data=[str(data)] if data else None, image_size=image_size,
                             augment=parse_settings(AugmentConfig(), augment, "--augment") if augment else None)
        summary = write_preview(cfg, out_png, n, seed)
        typer.echo(f"wrote {summary['pairs']} augmented pairs to {summary['path']}", err=True)
        if json_out:
            _print_json(summary)

    _guarded(action)


@app.command()
def finetune(
    task: Optional[str] = typer.Option(None, help="Task name recorded with the run; picks the built-in set without --data (default tumor)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Labelled folder ROOT/<class>/...; default: built-in set of --task."),
    from_run: Optional[int] = typer.Option(None, help="SSL pretraining run whose encoder to start from."),
    init: Optional[str] = typer.Option(None, help="ssl (with --from-run) | scratch | imagenet (with --weights)"),
    weights: Optional[Path] = typer.Option(None, help="--init imagenet: local timm weights file (.pth/.safetensors)."),
    encoder_lr_scale: Optional[float] = typer.Option(None, help="Full mode: encoder lr = lr x this (default 1)."),
    class_weighted: Optional[bool] = typer.Option(None, "--class-weighted/--no-class-weighted",
                                                  help="Inverse-frequency class weights in the loss (default on)."),
    bootstrap: Optional[int] = typer.Option(None, help="Bootstrap resamples (by subject) for 95% intervals (default 1000)."),
    model: Optional[str] = typer.Option(None, help="timm model name (default: the pretraining run's)."),
    image_size: Optional[int] = typer.Option(None, help="Image side in pixels (default: the pretraining run's)."),
    batch_size: Optional[int] = typer.Option(None, help="Images per step."),
    mode: Optional[str] = typer.Option(None, help="linear (frozen encoder) | full"),
    label_fraction: Optional[float] = typer.Option(None, help="Share of training subjects whose labels are used (0-1]."),
    labels_per_class: Optional[int] = typer.Option(None, help="Instead: whole subjects until N labelled images per class."),
    use_given_split: Optional[bool] = typer.Option(None, "--use-given-split", help=GIVEN_HELP),
    allow_leaky_split: Optional[bool] = typer.Option(None, "--allow-leaky-split", help=LEAKY_HELP),
    split_seed: Optional[int] = typer.Option(None, help="Seed of the train/val/test split (default 0: identical across runs)."),
    class_map: Optional[str] = typer.Option(None, help="Rename or merge classes: 'glioma=tumour,meningioma=tumour'."),
    epochs: Optional[int] = typer.Option(None, help="Budget: epochs x batches per epoch optimiser steps, at least --min-steps (default 10)."),
    steps: Optional[int] = typer.Option(None, help="Optimiser steps in all (instead of --epochs)."),
    min_steps: Optional[int] = typer.Option(None, help="Never fewer optimiser steps than this (default 300)."),
    lr: Optional[float] = typer.Option(None, help="Learning rate (AdamW)."),
    precision: Optional[str] = typer.Option(None, help="auto | bf16 | fp32"),
    subject_pattern: Optional[str] = typer.Option(None, help="Regex for the subject id in file names."),
    seed: Optional[int] = typer.Option(None, help="Seed of training and of the label draw (the split's is --split-seed)."),
    db: Optional[str] = typer.Option(None, help=DB_HELP),
    out: Optional[Path] = typer.Option(None, help="Folder for run outputs and checkpoints (default runs/)."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Train a classifier (linear probe or full fine-tune) on a subject-level split and score it on test."""

    def action() -> None:
        from sslmri_core.train.finetune import finetune as run_finetune
        from sslmri_core.train.finetune import resolve_finetune_config
        from sslmri_core.store.writer import RunStore

        from sslmri_core.data.sources import parse_class_map

        store = RunStore(db)
        cfg = resolve_finetune_config(
            store, task=task, data=str(data) if data else None, from_run=from_run, init=init, model=model,
            image_size=image_size, batch_size=batch_size, mode=mode, label_fraction=label_fraction, epochs=epochs,
            lr=lr, precision=precision, subject_pattern=subject_pattern, seed=seed, out=str(out) if out else None,
            labels_per_class=labels_per_class, use_given_split=use_given_split, split_seed=split_seed,
            class_map=parse_class_map(class_map) or None, weights=str(weights) if weights else None,
            encoder_lr_scale=encoder_lr_scale, class_weighted=class_weighted, bootstrap=bootstrap,
            allow_leaky_split=allow_leaky_split, steps=steps, min_steps=min_steps,
        )
        result = run_finetune(cfg, store, show_progress=progress)
        _print_metrics(f"finetune run {result.run_id} finished", result.metrics)
        if json_out:
            _print_json(_result_dict(result))

    _guarded(action)


@app.command()
def evaluate(
    run: int = typer.Option(..., "--run", help="Fine-tuning run whose selected model to score."),
    data: Path = typer.Option(..., "--data", help="External labelled folder ROOT/<class>/... (class names as the model's)."),
    bootstrap: Optional[int] = typer.Option(None, help="Bootstrap resamples (by subject) for 95% intervals (default: the run's)."),
    keep_overlap: bool = typer.Option(False, "--keep-overlap", help="Also score images that copy the model's training or SSL images (the run is then leakage-prone)."),
    db: Optional[str] = typer.Option(None, help=DB_HELP),
    out: Optional[Path] = typer.Option(None, help="Folder for run outputs (default: the model run's)."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Score a fine-tuned model on an external folder; stored as an evaluate run linked to the model's run."""

    def action() -> None:
        from rich.markup import escape

        from sslmri_core.evaluation.external import evaluate_external
        from sslmri_core.progress import console
        from sslmri_core.store.writer import RunStore

        result = evaluate_external(RunStore(db), run, data, bootstrap=bootstrap, out=str(out) if out else None,
                                   keep_overlap=keep_overlap)
        for key in result.overlap[:20]:
            console.print(f"[yellow]{'kept' if keep_overlap else 'left out'}[/] {escape(key)}: copies an image the "
                          "model trained, selected or pretrained on")
        for item in result.unusable[:20]:
            console.print(f"[yellow]unusable[/] {item['path']}: {item['reason']}")
        console.print(f"{result.usable} of {result.files} files used, {len(result.unusable)} unusable")
        _print_metrics(f"evaluate run {result.run_id} (model run {result.model_run})",
                       {k: v for k, v in result.metrics.items() if "/" not in k})
        if json_out:
            _print_json({"run_id": result.run_id, "kind": "evaluate", "model_run": result.model_run,
                         "files": result.files, "usable": result.usable, "unusable": result.unusable,
                         "overlap_excluded": result.overlap_excluded, "overlap": result.overlap,
                         "out_dir": result.out_dir, "metrics": result.metrics})

    _guarded(action)


def _float_list(text: Optional[str], option: str) -> Optional[list[float]]:
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{option} must be comma-separated numbers, got {text!r}") from None


@app.command()
def experiment(
    task: Optional[str] = typer.Option(None, help="Task name recorded with the runs; picks the built-in set without --data."),
    data: Optional[Path] = typer.Option(None, "--data", help="Labelled folder ROOT/<class>/...; default: built-in set of --task."),
    fractions: Optional[str] = typer.Option(None, help="Label fractions, comma-separated (default 0.01,0.1,1.0)."),
    seeds: Optional[int] = typer.Option(None, help="Seeds per arm and fraction (default 3)."),
    arms: Optional[str] = typer.Option(None, help="Comma-separated: ssl-linear,ssl-full,scratch[,imagenet]."),
    pretrain_run: Optional[int] = typer.Option(None, help="Use this SSL pretraining run instead of pretraining."),
    pretrain_epochs: Optional[int] = typer.Option(None, help="SimCLR epochs when pretraining (default 10)."),
    preset: Optional[str] = typer.Option(None, help="cpu: resnet18 at 64 px, few epochs, 2 seeds (a 2-core machine)."),
    model: Optional[str] = typer.Option(None, help="timm model name (default resnet50)."),
    image_size: Optional[int] = typer.Option(None, help="Image side in pixels (default 128)."),
    batch_size: Optional[int] = typer.Option(None, help="Images per step."),
    epochs: Optional[int] = typer.Option(None, help="Budget per fraction: epochs x batches of its labelled set, the same optimiser steps for every arm."),
    min_steps: Optional[int] = typer.Option(None, help="Never fewer optimiser steps per child than this (default 300)."),
    folds: Optional[int] = typer.Option(None, help="K-fold cross-validation over subjects/groups (every one tested once), SSL pretrained per fold."),
    lr: Optional[float] = typer.Option(None, help="Learning rate (AdamW)."),
    encoder_lr_scale: Optional[float] = typer.Option(None, help="ssl-full / imagenet: encoder lr = lr x this."),
    weights: Optional[Path] = typer.Option(None, help="imagenet arm: local timm weights file."),
    split_seed: Optional[int] = typer.Option(None, help="Seed of the train/val/test split, fixed across arms (default 0)."),
    use_given_split: Optional[bool] = typer.Option(None, "--use-given-split", help=GIVEN_HELP),
    allow_leaky_split: Optional[bool] = typer.Option(None, "--allow-leaky-split", help=LEAKY_HELP),
    subject_pattern: Optional[str] = typer.Option(None, help="Regex for the subject id in file names."),
    class_map: Optional[str] = typer.Option(None, help="Rename or merge classes: 'glioma=tumour,meningioma=tumour'."),
    precision: Optional[str] = typer.Option(None, help="auto | bf16 | fp32"),
    bootstrap: Optional[int] = typer.Option(None, help="Bootstrap resamples per child evaluation (default 1000)."),
    db: Optional[str] = typer.Option(None, help=DB_HELP),
    out: Optional[Path] = typer.Option(None, help="Folder for run outputs and checkpoints (default runs/)."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """SSL vs supervised: pretrain once, then every arm x label fraction x seed on one split; summary with intervals.

    Re-running the same command resumes: finished runs are skipped, the others run."""

    def action() -> None:
        from sslmri_core.evaluation.experiment import resolve_experiment_config, run_experiment
        from sslmri_core.data.sources import parse_class_map
        from sslmri_core.store.writer import RunStore

        store = RunStore(db)
        cfg = resolve_experiment_config(
            store, preset, task=task, data=str(data) if data else None, fractions=_float_list(fractions, "--fractions"),
            seeds=seeds, arms=[a.strip() for a in arms.split(",") if a.strip()] if arms is not None else None,
            pretrain_run=pretrain_run, pretrain_epochs=pretrain_epochs, model=model, image_size=image_size,
            batch_size=batch_size, finetune_epochs=epochs, min_steps=min_steps, folds=folds, lr=lr,
            encoder_lr_scale=encoder_lr_scale, weights=str(weights) if weights else None, split_seed=split_seed,
            use_given_split=use_given_split, allow_leaky_split=allow_leaky_split, subject_pattern=subject_pattern,
            class_map=parse_class_map(class_map) or None, precision=precision, bootstrap=bootstrap,
            out=str(out) if out else None,
        )
        result = run_experiment(cfg, store, show_progress=progress)
        if json_out:
            _print_json(result.to_json())

    _guarded(action)


def _int_list(text: Optional[str], option: str) -> Optional[list[int]]:
    """'20,50,80' -> [20, 50, 80]; '' -> []; None stays None (the config's default)."""
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{option} must be comma-separated integers, got {text!r}") from None


@app.command()
def gradcam(
    run: Optional[int] = typer.Option(None, "--run", help="Fine-tuning run whose checkpoint to explain."),
    split: Optional[str] = typer.Option(None, help="train | val | test of that run's stored split (default test)."),
    method: Optional[str] = typer.Option(None, help="gradcam | gradcam++ | hirescam | eigencam | layercam | scorecam"),
    target_layer: Optional[str] = typer.Option(None, help="Module to explain (default: the deepest encoder stage with an 8x8 map or more)."),
    target_class: Optional[str] = typer.Option(None, help="Class to explain (default: each scan's predicted class)."),
    limit: Optional[int] = typer.Option(None, help="At most this many scans."),
    threshold: Optional[float] = typer.Option(None, help="Activation area = share of the map >= this (default 0.5)."),
    topk_pct: Optional[float] = typer.Option(None, help="Faithfulness: remove this % of the image (default 20)."),
    road_percentiles: Optional[str] = typer.Option(None, help="ROADCombined percentiles, e.g. '20,50,80' (default 80; '' skips ROAD)."),
    batch_size: Optional[int] = typer.Option(None, help="Scans per batch (default 32)."),
    precision: Optional[str] = typer.Option(None, help="auto | bf16 | fp32 for the model's passes (default fp32)."),
    db: Optional[str] = typer.Option(None, help=DB_HELP),
    out: Optional[Path] = typer.Option(None, help="Folder for run outputs (default runs/); maps go to run-ID/cams/."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Grad-CAM maps of a fine-tuned run's scans, with per-scan statistics and faithfulness checks."""

    def action() -> None:
        from sslmri_core.config import GradcamConfig, with_overrides
        from sslmri_core.explain.run import run_gradcam, validate_gradcam
        from sslmri_core.store.writer import RunStore

        cfg = with_overrides(GradcamConfig(), run=run, split=split, method=method, target_layer=target_layer,
                             target_class=target_class, limit=limit, threshold=threshold, topk_pct=topk_pct,
                             batch_size=batch_size, precision=precision, out=str(out) if out else None,
                             road_percentiles=_int_list(road_percentiles, "--road-percentiles"))
        validate_gradcam(cfg)  # before opening the store: a bad option never touches it
        result = run_gradcam(cfg, RunStore(db), show_progress=progress)
        _print_metrics(f"gradcam run {result.run_id} finished ({result.out_dir})",
                       {k: v for k, v in result.summary.items() if isinstance(v, float)})
        if json_out:
            _print_json(result.summary)

    _guarded(action)


@app.command()
def leakage(
    data: Path = typer.Option(..., "--data", help="Labelled folder ROOT/<class>/... whose file names carry subject ids."),
    model: Optional[str] = typer.Option(None, help="timm model name (default resnet18)."),
    image_size: Optional[int] = typer.Option(None, help="Image side in pixels (default 64)."),
    batch_size: Optional[int] = typer.Option(None, help="Images per step (default 64)."),
    epochs: Optional[int] = typer.Option(None, help="Budget: passes over 70% of the images, as steps shared by all four runs (default 8)."),
    steps: Optional[int] = typer.Option(None, help="Optimiser steps of each of the four runs (instead of --epochs)."),
    lr: Optional[float] = typer.Option(None, help="Learning rate (AdamW, default 1e-3)."),
    seed: Optional[int] = typer.Option(None, help="Training seed and the draw of the shuffled labels (default 0)."),
    split_seed: Optional[int] = typer.Option(None, help="Seed of the train/val/test splits (default 0)."),
    subject_pattern: Optional[str] = typer.Option(None, help="Regex for the subject id in file names."),
    class_map: Optional[str] = typer.Option(None, help="Rename or merge classes: 'glioma=tumour,meningioma=tumour'."),
    task: Optional[str] = typer.Option(None, help="Task name recorded with the runs (default: the folder's name)."),
    precision: Optional[str] = typer.Option(None, help="auto | bf16 | fp32"),
    db: Optional[str] = typer.Option(None, help=DB_HELP),
    out: Optional[Path] = typer.Option(None, help="Folder for run outputs and checkpoints (default runs/)."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Data leakage, shown: split by subject or by image x true or per-subject shuffled labels (Yagis et al. 2021).

    With shuffled labels an image-level split scores above chance (the model recognises subjects);
    a subject-level split scores at chance."""

    def action() -> None:
        from sslmri_core.evaluation.leakage import resolve_leakage_config, run_leakage, validate_leakage
        from sslmri_core.data.sources import parse_class_map
        from sslmri_core.store.writer import RunStore

        cfg = resolve_leakage_config(
            data=str(data), model=model, image_size=image_size, batch_size=batch_size, epochs=epochs, steps=steps,
            lr=lr, seed=seed, split_seed=split_seed, subject_pattern=subject_pattern,
            class_map=parse_class_map(class_map) or None, task=task, precision=precision,
            out=str(out) if out else None,
        )
        validate_leakage(cfg)  # before opening the store: a bad option never touches it
        result = run_leakage(cfg, RunStore(db), show_progress=progress)
        if json_out:
            _print_json(result.to_json())

    _guarded(action)


@app.command()
def demo(
    db: Optional[str] = typer.Option(None, help=DB_HELP),
    out: Optional[Path] = typer.Option(None, help="Folder for run outputs (default runs/)."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """The main job on the built-in data: SSL pretraining, then SSL (linear, full) vs scratch fine-tuning."""

    def action() -> None:
        from sslmri_core.evaluation.demo import run_demo
        from sslmri_core.store.writer import RunStore

        results = run_demo(RunStore(db), out=str(out) if out else None)
        if json_out:
            _print_json([_result_dict(r) for r in results])

    _guarded(action)


@app.command()
def embed(
    run: int = typer.Option(..., "--run", help="Pretrain or finetune run whose encoder features to map."),
    method: str = typer.Option("umap", help="umap (umap-learn) or tsne (scikit-learn)."),
    split: str = typer.Option("all", help="all, or one split of the run (train, val, test; pool for pretraining)."),
    max_images: int = typer.Option(5000, help="At most this many images (a fixed random subset beyond it)."),
    db: Optional[str] = typer.Option(None, help=DB_HELP),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """2-D map (UMAP or t-SNE) of a run's encoder features, stored for the dashboard's Embeddings page."""

    def action() -> None:
        from dataclasses import asdict

        from sslmri_core.evaluation.embed import embed_run
        from sslmri_core.progress import console
        from sslmri_core.store.writer import RunStore

        result = embed_run(RunStore(db), run, method.lower(), split, max_images=max_images)
        console.print(f"embedded run {result.run_id} ({result.method}): {result.n_points} images, "
                      f"{result.n_features} features, splits {result.splits}")
        if json_out:
            _print_json(asdict(result))

    _guarded(action)


# ---------------------------------------------------------------------------------------------
def _run_summary(store: Any, record: Any) -> dict[str, Any]:
    return {"run_id": record.id, "kind": record.kind, "status": record.status, "task": record.task,
            "parent_run_id": record.parent_run_id, "checkpoint": record.checkpoint_path,
            "created_at": record.created_at.isoformat() if record.created_at else None,
            "error": record.error, "metrics": store.final_metrics(record.id)}


def _leakage(store: Any, record: Any) -> dict[str, Any]:
    """``leakage_prone`` and ``leakage_reasons`` of a run; a grid run (experiment, leakage) has those of its children."""
    from sslmri_core.store.writer import leakage_reasons

    reasons = leakage_reasons(store.params(record.id))
    if record.kind in ("experiment", "leakage"):
        for child in store.list_runs("finetune"):
            if child.parent_run_id == record.id:
                reasons += [f"child run {child.id}: {r}" for r in leakage_reasons(store.params(child.id))]
    return {"leakage_prone": bool(reasons), "leakage_reasons": reasons}


def _store_stale_runs(store: Any) -> None:
    """Store ``interrupted`` for runs whose process died (no heartbeat); best effort: a read-only role just reads."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        store.mark_stale_interrupted()
    except SQLAlchemyError:
        pass  # the records still read as interrupted


@runs_app.command("list")
def runs_list(
    kind: Optional[str] = typer.Option(None, help="Only runs of this kind (pretrain, finetune, ...)."),
    db: Optional[str] = typer.Option(None, help=DB_HELP),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """List the runs in the store."""

    def action() -> None:
        from rich.table import Table

        from sslmri_core.progress import console
        from sslmri_core.store.writer import RunStore

        store = RunStore(db)
        _store_stale_runs(store)
        rows = [_run_summary(store, r) for r in store.list_runs(kind)]
        if json_out:
            _print_json(rows)
            return
        if not rows:
            console.print("No runs yet: run `make demo`, or `python cli.py pretrain` then `python cli.py finetune --from-run ID`.")
            return
        table = Table(title=f"runs in {store.display_url}")
        for col in ("id", "kind", "status", "task", "parent", "created", "test acc", "test macro F1", "loss"):
            table.add_column(col)
        for r in rows:
            m = r["metrics"]
            fmt = lambda k: f"{m[k]:.3f}" if k in m else ""  # noqa: E731
            table.add_row(str(r["run_id"]), r["kind"], r["status"], r["task"] or "", str(r["parent_run_id"] or ""),
                          (r["created_at"] or "")[:19], fmt("test_accuracy"), fmt("test_macro_f1"), fmt("epoch_loss"))
        console.print(table)

    _guarded(action)


@runs_app.command("show")
def runs_show(
    run_id: int = typer.Argument(..., help="Run id."),
    db: Optional[str] = typer.Option(None, help=DB_HELP),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Show one run: status, config and final metrics."""

    def action() -> None:
        from sslmri_core.progress import console
        from sslmri_core.store.writer import RunStore

        store = RunStore(db)
        _store_stale_runs(store)
        record = store.get_run(run_id)
        summary = {**_run_summary(store, record), **_leakage(store, record), "config": record.config,
                   "device": record.device, "git_sha": record.git_sha, "out_dir": record.out_dir}
        if json_out:
            _print_json(summary)
            return
        console.print_json(json.dumps(_jsonable({k: v for k, v in summary.items() if k != "metrics"}), default=str))
        _print_metrics(f"run {run_id} metrics", summary["metrics"])

    _guarded(action)


@db_app.command("upgrade")
def db_upgrade(
    db: Optional[str] = typer.Option(None, help=DB_HELP),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Upgrade the store's schema to the newest revision (every command also does this on opening a store)."""

    def action() -> None:
        from sslmri_core.progress import console
        from sslmri_core.store.writer import RunStore, current_revision, head_revision, migrate, retrying

        store = RunStore(db, upgrade=False)
        try:
            before = current_revision(store.engine)
            retrying(migrate)(store.engine)
            after = current_revision(store.engine)
        except Exception as exc:
            from sslmri_core.store.writer import StoreError

            reason = " ".join(str(getattr(exc, "orig", None) or exc).split())
            raise StoreError(f"cannot upgrade run store {store.display_url!r} (--db / $SSLMRI_DB): "
                             f"{exc.__class__.__name__}: {reason}") from exc
        console.print(f"{store.display_url}: revision {before or '(empty)'} -> {after} "
                      + ("(already current)" if before == after else f"(head {head_revision()})"))
        if json_out:
            _print_json({"db": store.display_url, "before": before, "after": after, "head": head_revision()})

    _guarded(action)


if __name__ == "__main__":
    app()
