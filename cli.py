"""sslmri command line. A Typer shim: each command hands its options, by name, to one function of ``sslmri_core``
(``_run("module:function", locals())``), imported only when the command runs (``--help`` never imports torch).
Shared options are ``Annotated`` aliases; unset ones are ``None`` and never override ``sslmri_core/config.py``.
Errors become one line on stderr and an exit code (:mod:`sslmri_core.errors`)."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from sslmri_core.errors import Interrupted, SslmriError

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
CLASS_MAP_HELP = "Rename or merge classes: 'glioma=tumour,meningioma=tumour'."
LABELLED_HELP = "Labelled folder ROOT/<class>/...; default: built-in set of --task."

# -- options shared by several commands (same name, default and help everywhere) --------------------
DbOpt = Annotated[str | None, typer.Option("--db", help=DB_HELP)]
JsonOpt = Annotated[bool, typer.Option("--json", help=JSON_HELP)]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")]
ProgressBarsOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")]
OutOpt = Annotated[Path | None, typer.Option("--out", help="Folder for run outputs and checkpoints (default runs/).")]
FolderArg = Annotated[Path, typer.Argument(help="Data folder: ROOT/<class>/... images or NIfTI volumes.")]
LabelledDataOpt = Annotated[Path | None, typer.Option("--data", help=LABELLED_HELP)]
SubjectPatternOpt = Annotated[str | None, typer.Option(
    "--subject-pattern", help="Regex for the subject id in file names.")]
ClassMapOpt = Annotated[str | None, typer.Option("--class-map", help=CLASS_MAP_HELP)]
AugmentOpt = Annotated[str | None, typer.Option(
    "--augment", help="Augmentation settings, e.g. 'bias_field=0.3,rotate_deg=15'.")]
PrecisionOpt = Annotated[str | None, typer.Option("--precision", help="auto | bf16 | fp32")]
ImageSizeOpt = Annotated[int | None, typer.Option("--image-size", help="Image side in pixels (default 128).")]
BatchSizeOpt = Annotated[int | None, typer.Option("--batch-size", help="Images per step.")]
LrOpt = Annotated[float | None, typer.Option("--lr", help="Learning rate (AdamW).")]
WeightDecayOpt = Annotated[float | None, typer.Option(help="Weight decay (default: pretrain 1e-6, finetune 1e-4).")]
GivenSplitOpt = Annotated[bool | None, typer.Option("--use-given-split", help=GIVEN_HELP)]
LeakySplitOpt = Annotated[bool | None, typer.Option("--allow-leaky-split", help=LEAKY_HELP)]
PresetOpt = Annotated[str | None, typer.Option(help="cpu | gpu: the measured recipe (README); given options win.")]
UnlabeledOpt = Annotated[list[Path] | None, typer.Option("--unlabeled", help=(
    "More folders for the SSL pool (repeatable; labels ignored; copies of val/test images left out)."))]
PreprocessOpt = Annotated[str | None, typer.Option(
    help="none | crop | norm | crop+norm: crop each slice to the head; percentile-normalise inside it.")]


def _fail(message: str, code: int) -> None:
    from sslmri_core.store.engine import mask_text  # only when failing: --help stays free of SQLAlchemy
    typer.echo(f"error: {mask_text(message)}", err=True)
    raise typer.Exit(code)


def _guarded(action: Callable[[], T]) -> T:
    """Run a command body: an :class:`SslmriError` becomes one line on stderr and its ``exit_code``; other
    ValueErrors and missing files exit 2, Ctrl-C 130, crashes 1 (``SSLMRI_DEBUG=1``: a traceback for exit 1)."""
    try:
        return action()
    except typer.Exit:
        raise
    except (KeyboardInterrupt, Interrupted) as exc:
        _fail(f"{str(exc) or 'interrupted'} (the run is marked interrupted)", 130)
    except SslmriError as exc:
        if os.environ.get("SSLMRI_DEBUG") and exc.exit_code == 1:
            raise
        _fail(str(exc), exc.exit_code)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc), 2)
    except Exception as exc:
        if os.environ.get("SSLMRI_DEBUG"):
            raise
        _fail(f"{exc.__class__.__name__}: {exc} (set SSLMRI_DEBUG=1 for a traceback)", 1)
    raise AssertionError("unreachable")


RUN_IDS = {"run": "--run", "run_id": "RUN_ID", "from_run": "--from-run", "pretrain_run": "--pretrain-run",
           "resume": "--resume"}  # options naming a run: at most the store's BIGINT, checked before anything runs


def _run(target: str, options: dict[str, Any]) -> None:
    """Call ``sslmri_core.<module>:<function>`` with the options as keywords, guarded (imported only now)."""
    for key in [k for k in RUN_IDS if options.get(k) is not None and not 1 <= options[k] <= 2**63 - 1]:
        _fail(f"{RUN_IDS[key]} must be a run id between 1 and {2**63 - 1}, got {options[key]}", 2)
    module, name = target.split(":")
    _guarded(lambda: getattr(importlib.import_module(f"sslmri_core.{module}"), name)(**options))


# -- data --------------------------------------------------------------------------------------------
@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Argument(help="Folder to write <task>/<class>/<subject>_slice-<z>.png into.")],
    task: Annotated[str | None, typer.Option(help="tumor | alzheimer | parkinsons | ms | all")] = None,
    subjects: Annotated[int | None, typer.Option(help="Synthetic subjects per class.")] = None,
    slices_per_subject: Annotated[int | None, typer.Option(help="Axial slices per subject.")] = None,
    size: Annotated[int | None, typer.Option(help="Image side in pixels.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (same seed, same files).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Write the built-in synthetic brain-MRI set (from the MNI152 template nilearn ships)."""
    _run("data.commands:synth", locals())


@data_app.command("check")
def data_check(
    folder: FolderArg,
    subject_pattern: SubjectPatternOpt = None,
    class_map: ClassMapOpt = None,
    image_size: Annotated[int | None, typer.Option(help="Cache images at this size (default 128).")] = None,
    export: Annotated[Path | None, typer.Option(help="Write the manifest to this .csv or .parquet file.")] = None,
    db: DbOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Build the manifest (and image cache): counts per class, subjects, and every unusable file with its reason."""
    _run("data.commands:check", locals())


@data_app.command("audit")
def data_audit(
    folder: FolderArg,
    subject_pattern: SubjectPatternOpt = None,
    split_seed: Annotated[int | None, typer.Option(
        help="Seed of the group split checked for cross-split leaks.")] = None,
    use_given_split: Annotated[bool, typer.Option(
        "--use-given-split", help="Check the folder's own Training/Testing split instead of sslmri's.")] = False,
    near_threshold: Annotated[int, typer.Option(
        help="Perceptual-hash distance (of 64 bits) that counts as a near-duplicate.")] = 4,
    db: DbOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Duplicates, near-duplicates, subject leaks across splits, acquisition confounds, class balance."""
    _run("data.commands:audit", locals())


# -- training ----------------------------------------------------------------------------------------
@app.command()
def pretrain(
    data: Annotated[list[Path] | None, typer.Option(
        "--data", help="Image folder(s) ROOT/<class>/...; labels only monitor. Default: built-in set.")] = None,
    unlabeled: UnlabeledOpt = None, preset: PresetOpt = None, preprocess: PreprocessOpt = None,
    model: Annotated[str | None, typer.Option(help="Any timm model name (default resnet50).")] = None,
    image_size: Annotated[int | None, typer.Option(help="Training image side in pixels (default 128).")] = None,
    batch_size: Annotated[int | None, typer.Option(
        help="Images per step and process; each gives two views (default 32).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Passes over the data (default 10).")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many steps in total.")] = None,
    optimizer: Annotated[str | None, typer.Option(
        help="auto | lars | adamw | sgd (auto: LARS from a global batch of 256).")] = None,
    lr: Annotated[float | None, typer.Option(
        help="Peak learning rate (default: 0.3 x batch/256 LARS, 1e-3 AdamW).")] = None,
    weight_decay: WeightDecayOpt = None,
    warmup_epochs: Annotated[float | None, typer.Option(
        help="Linear warm-up epochs before the cosine decay (default 1).")] = None,
    temperature: Annotated[float | None, typer.Option(help="NT-Xent temperature (default 0.2).")] = None,
    mask_same_subject: Annotated[bool | None, typer.Option("--mask-same-subject/--subject-negatives",
        help="Slices of one subject are not each other's NT-Xent negatives (default on).")] = None,
    monitor_share: Annotated[float | None, typer.Option(help="kNN monitor: at most this share of epoch time.")] = None,
    compile: Annotated[str | None, typer.Option(help="auto | on | off: torch.compile (auto: CUDA, 2k+ steps).")] = None,
    proj_hidden_dim: Annotated[int | None, typer.Option(help="Projection head hidden size (default 512).")] = None,
    proj_dim: Annotated[int | None, typer.Option(help="Projection head output size (default 128).")] = None,
    augment: AugmentOpt = None,
    precision: Annotated[str | None, typer.Option(
        help="auto | bf16 | fp16 | fp32 (auto: bf16 where supported, fp16 on older GPUs).")] = None,
    monitor: Annotated[bool | None, typer.Option("--monitor/--no-monitor",
        help="Per-epoch kNN and linear-probe accuracy when the folders have classes (default on).")] = None,
    subject_pattern: SubjectPatternOpt = None,
    exclude_test: Annotated[bool | None, typer.Option("--exclude-test/--include-test",
        help="Leave each --data folder's test split out of the pool (default).")] = None,
    exclude_val: Annotated[bool | None, typer.Option("--exclude-val/--include-val",
        help="Also leave the val split out (train subjects only; val stays the kNN queries).")] = None,
    split_seed: Annotated[int | None, typer.Option(help="Seed of the group split whose test part is left out.")] = None,
    use_given_split: Annotated[bool | None, typer.Option("--use-given-split",
        help="Leave out the folder's own Testing split instead (checked like finetune's).")] = None,
    class_map: Annotated[str | None, typer.Option(
        help="The class map fine-tuning will use (classes stratify the split left out).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    checkpoint_minutes: Annotated[float | None, typer.Option(
        help="Also checkpoint mid-epoch after this many minutes (default 10; 0: epoch ends only).")] = None,
    resume: Annotated[int | None, typer.Option(
        help="Continue this interrupted (or killed, or failed) pretraining run from its last checkpoint.")] = None,
    db: DbOpt = None, out: OutOpt = None, json_out: JsonOpt = False, progress: ProgressOpt = True,
) -> None:
    """SimCLR self-supervised pretraining of an encoder on unlabeled MRI slices.

    Multi-GPU / multi-node: torchrun --nproc_per_node N cli.py pretrain ... (rank 0 writes the store)."""
    _run("train.launch:pretrain", locals())


@app.command("augment-preview")
def augment_preview(
    out_png: Annotated[Path, typer.Argument(metavar="OUT.png", help="Where to write the grid (PNG).")],
    data: Annotated[Path | None, typer.Option(
        "--data", help="Image folder ROOT/<class>/...; default: built-in pretraining set.")] = None,
    n: Annotated[int, typer.Option("--n", help="Images shown (one row each: original, view 1, view 2).")] = 8,
    image_size: ImageSizeOpt = None,
    augment: AugmentOpt = None,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same grid.")] = 0,
    json_out: JsonOpt = False,
) -> None:
    """Write a grid of augmented SimCLR pairs (original | view 1 | view 2 per row) to OUT.png."""
    _run("train.launch:augment_preview", locals())


@app.command()
def finetune(
    task: Annotated[str | None, typer.Option(
        help="Task name recorded with the run; picks the built-in set without --data (default tumor).")] = None,
    data: LabelledDataOpt = None, preset: PresetOpt = None, preprocess: PreprocessOpt = None,
    label_smoothing: Annotated[float | None, typer.Option(help="Label smoothing of the loss (default 0).")] = None,
    tta: Annotated[bool | None, typer.Option("--tta/--no-tta", help="Also average the mirror image.")] = None,
    from_run: Annotated[int | None, typer.Option(help="SSL pretraining run whose encoder to start from.")] = None,
    init: Annotated[str | None, typer.Option(
        help="ssl (with --from-run) | scratch | imagenet (with --weights)")] = None,
    weights: Annotated[Path | None, typer.Option(
        help="--init imagenet: local timm weights file (.pth/.safetensors).")] = None,
    encoder_lr_scale: Annotated[float | None, typer.Option(
        help="Full mode: encoder lr = lr x this (default 1).")] = None,
    class_weighted: Annotated[bool | None, typer.Option("--class-weighted/--no-class-weighted",
        help="Inverse-frequency class weights in the loss (default on).")] = None,
    bootstrap: Annotated[int | None, typer.Option(
        help="Bootstrap resamples (by subject) for 95% intervals (default 1000).")] = None,
    model: Annotated[str | None, typer.Option(help="timm model name (default: the pretraining run's).")] = None,
    image_size: Annotated[int | None, typer.Option(
        help="Image side in pixels (default: the pretraining run's).")] = None,
    batch_size: BatchSizeOpt = None,
    mode: Annotated[str | None, typer.Option(help="linear (frozen encoder) | full")] = None,
    label_fraction: Annotated[float | None, typer.Option(
        help="Share of training subjects whose labels are used (0-1].")] = None,
    labels_per_class: Annotated[int | None, typer.Option(
        help="Instead: whole subjects until N labelled images per class.")] = None,
    use_given_split: GivenSplitOpt = None,
    allow_leaky_split: LeakySplitOpt = None,
    split_seed: Annotated[int | None, typer.Option(
        help="Seed of the train/val/test split (default 0: identical across runs).")] = None,
    class_map: ClassMapOpt = None,
    epochs: Annotated[int | None, typer.Option(
        help="Budget: epochs x batches per epoch optimiser steps, at least --min-steps (default 10).")] = None,
    steps: Annotated[int | None, typer.Option(help="Optimiser steps in all (instead of --epochs).")] = None,
    min_steps: Annotated[int | None, typer.Option(help="Never fewer optimiser steps than this (default 300).")] = None,
    lr: LrOpt = None, weight_decay: WeightDecayOpt = None,
    precision: PrecisionOpt = None, augment: AugmentOpt = None,
    subject_pattern: SubjectPatternOpt = None,
    seed: Annotated[int | None, typer.Option(
        help="Seed of training and of the label draw (the split's is --split-seed).")] = None,
    db: DbOpt = None, out: OutOpt = None, json_out: JsonOpt = False, progress: ProgressOpt = True,
) -> None:
    """Train a classifier (linear probe or full fine-tune) on a subject-level split and score it on test."""
    _run("train.launch:finetune", locals())


# -- evaluation --------------------------------------------------------------------------------------
@app.command()
def evaluate(
    run: Annotated[int, typer.Option("--run", help="Fine-tuning run whose selected model to score.")],
    data: Annotated[Path, typer.Option(
        "--data", help="External labelled folder ROOT/<class>/... (class names as the model's).")],
    class_map: ClassMapOpt = None,
    bootstrap: Annotated[int | None, typer.Option(
        help="Bootstrap resamples (by subject) for 95% intervals (default: the run's).")] = None,
    keep_overlap: Annotated[bool, typer.Option("--keep-overlap", help=(
        "Also score images that copy the model's training or SSL images (the run is then leakage-prone)."))] = False,
    db: DbOpt = None,
    out: Annotated[Path | None, typer.Option(help="Folder for run outputs (default: the model run's).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Score a fine-tuned model on an external folder; stored as an evaluate run linked to the model's run."""
    _run("evaluation.commands:evaluate", locals())


@app.command()
def experiment(
    task: Annotated[str | None, typer.Option(
        help="Task name recorded with the runs; picks the built-in set without --data.")] = None,
    data: LabelledDataOpt = None,
    fractions: Annotated[str | None, typer.Option(
        help="Label fractions, comma-separated (default 0.01,0.1,1.0).")] = None,
    seeds: Annotated[int | None, typer.Option(help="Seeds per arm and fraction (default 3).")] = None,
    arms: Annotated[str | None, typer.Option(help="Comma-separated: ssl-linear,ssl-full,scratch[,imagenet].")] = None,
    pretrain_run: Annotated[int | None, typer.Option(
        help="Use this SSL pretraining run instead of pretraining.")] = None,
    pretrain_epochs: Annotated[int | None, typer.Option(help="SimCLR epochs when pretraining (default 10).")] = None,
    preset: PresetOpt = None, unlabeled: UnlabeledOpt = None, preprocess: PreprocessOpt = None,
    model: Annotated[str | None, typer.Option(help="timm model name (default resnet50).")] = None,
    image_size: ImageSizeOpt = None,
    batch_size: BatchSizeOpt = None,
    epochs: Annotated[int | None, typer.Option(help=(
        "Budget per fraction: epochs x batches of its labelled set, the same optimiser steps for every arm."))] = None,
    min_steps: Annotated[int | None, typer.Option(
        help="Never fewer optimiser steps per child than this (default 300).")] = None,
    folds: Annotated[int | None, typer.Option(help=(
        "K-fold cross-validation over subjects/groups (every one tested once), SSL pretrained per fold."))] = None,
    lr: LrOpt = None,
    encoder_lr_scale: Annotated[float | None, typer.Option(help="ssl-full / imagenet: encoder lr = lr x this.")] = None,
    weights: Annotated[Path | None, typer.Option(help="imagenet arm: local timm weights file.")] = None,
    split_seed: Annotated[int | None, typer.Option(
        help="Seed of the train/val/test split, fixed across arms (default 0).")] = None,
    use_given_split: GivenSplitOpt = None,
    allow_leaky_split: LeakySplitOpt = None,
    subject_pattern: SubjectPatternOpt = None,
    class_map: ClassMapOpt = None,
    precision: PrecisionOpt = None,
    bootstrap: Annotated[int | None, typer.Option(
        help="Bootstrap resamples per child evaluation (default 1000).")] = None,
    db: DbOpt = None, out: OutOpt = None, json_out: JsonOpt = False,
    progress: ProgressBarsOpt = True,
) -> None:
    """SSL vs supervised: pretrain once, then every arm x label fraction x seed on one split; summary with intervals.

    Re-running the same command resumes: finished runs are skipped, the others run."""
    _run("evaluation.commands:experiment", locals())


@app.command()
def gradcam(
    run: Annotated[int | None, typer.Option("--run", help="Fine-tuning run whose checkpoint to explain.")] = None,
    split: Annotated[str | None, typer.Option(help="train | val | test of that run's split (default test).")] = None,
    method: Annotated[str | None, typer.Option(
        help="gradcam | gradcam++ | hirescam | eigencam | layercam | scorecam")] = None,
    target_layer: Annotated[str | None, typer.Option(
        help="Module to explain (default: the deepest encoder stage with an 8x8 map or more).")] = None,
    target_class: Annotated[str | None, typer.Option(
        help="Class to explain (default: each scan's predicted class).")] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many scans (a seeded sample of the split).")] = None,
    threshold: Annotated[float | None, typer.Option(
        help="Activation area = share of the map >= this (default 0.5).")] = None,
    topk_pct: Annotated[float | None, typer.Option(
        help="Faithfulness: remove this % of the image (default 20).")] = None,
    road_percentiles: Annotated[str | None, typer.Option(
        help="ROADCombined percentiles, e.g. '20,50,80' (default 80; '' skips ROAD).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Scans per batch (default 32).")] = None,
    precision: Annotated[str | None, typer.Option(
        help="auto | bf16 | fp32 for the model's passes (default fp32).")] = None,
    db: DbOpt = None,
    out: Annotated[Path | None, typer.Option(
        help="Folder for run outputs (default runs/); maps go to run-ID/cams/.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object as the last line of stdout "
        "(pointing_game and its chance: over correctly classified scans with a lesion mask).")] = False,
    progress: ProgressOpt = True,
) -> None:
    """Grad-CAM maps of a fine-tuned run's scans, with per-scan statistics and faithfulness checks."""
    _run("evaluation.commands:gradcam", locals())


@app.command()
def report(
    run: Annotated[int, typer.Option("--run", help="Fine-tuning run whose model reads the scan.")],
    scan: Annotated[str, typer.Option("--scan", help="A scan the run stored (PATH or PATH#z=K) or any image file.")],
    out: Annotated[Path, typer.Option("--out", help="The PDF to write (an existing file is never overwritten).")],
    window: Annotated[str | None, typer.Option(help="Grey window LO,HI, 0-255 display units (default 0,255).")] = None,
    method: Annotated[str | None, typer.Option(help="CAM method drawn, and whose stored statistics are shown.")] = None,
    overlay: Annotated[str | None, typer.Option(
        help="How the map is drawn (default 'opacity=0.4,colormap=jet,threshold=0.2').")] = None,
    db: DbOpt = None, json_out: JsonOpt = False,
) -> None:
    """One-page PDF to file: scan, Grad-CAM, prediction, patient-level decision, model and CAM statistics."""
    _run("explain.report:report_command", locals())


@app.command()
def leakage(
    data: Annotated[Path, typer.Option(
        "--data", help="Labelled folder ROOT/<class>/... whose file names carry subject ids.")],
    model: Annotated[str | None, typer.Option(help="timm model name (default resnet18).")] = None,
    image_size: Annotated[int | None, typer.Option(help="Image side in pixels (default 64).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per step (default 64).")] = None,
    epochs: Annotated[int | None, typer.Option(
        help="Budget: passes over 70% of the images, as steps shared by all four runs (default 8).")] = None,
    steps: Annotated[int | None, typer.Option(
        help="Optimiser steps of each of the four runs (instead of --epochs).")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate (AdamW, default 1e-3).")] = None,
    seed: Annotated[int | None, typer.Option(
        help="Training seed and the draw of the shuffled labels (default 0).")] = None,
    split_seed: Annotated[int | None, typer.Option(help="Seed of the train/val/test splits (default 0).")] = None,
    subject_pattern: SubjectPatternOpt = None,
    class_map: ClassMapOpt = None,
    task: Annotated[str | None, typer.Option(
        help="Task name recorded with the runs (default: the folder's name).")] = None,
    precision: PrecisionOpt = None,
    db: DbOpt = None, out: OutOpt = None, json_out: JsonOpt = False,
    progress: ProgressBarsOpt = True,
) -> None:
    """Data leakage, shown: split by subject or by image x true or per-subject shuffled labels (Yagis et al. 2021).

    With shuffled labels an image-level split scores above chance (the model recognises subjects);
    a subject-level split scores at chance."""
    _run("evaluation.commands:leakage", locals())


@app.command()
def demo(
    db: DbOpt = None,
    out: Annotated[Path | None, typer.Option(help="Folder for run outputs (default runs/).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """The main job on the built-in data: audits, leakage demo, SSL vs scratch at 3 label fractions, Grad-CAM, UMAP."""
    _run("evaluation.commands:demo", locals())


@app.command()
def embed(
    run: Annotated[int, typer.Option("--run", help="Pretrain or finetune run whose encoder features to map.")],
    method: Annotated[str, typer.Option(help="umap (umap-learn) or tsne (scikit-learn).")] = "umap",
    split: Annotated[str, typer.Option(help="all, or train | val | test (pool for pretraining).")] = "all",
    max_images: Annotated[int, typer.Option(help="At most this many images (a fixed random subset beyond it).")] = 5000,
    db: DbOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """2-D map (UMAP or t-SNE) of a run's encoder features, stored for the dashboard's Embeddings page."""
    _run("evaluation.commands:embed", locals())


# -- the run store -----------------------------------------------------------------------------------
@runs_app.command("list")
def runs_list(
    kind: Annotated[str | None, typer.Option(help="Only runs of this kind (pretrain, finetune, ...).")] = None,
    db: DbOpt = None, json_out: JsonOpt = False,
) -> None:
    """List the runs in the store."""
    _run("store.commands:runs_list", locals())


@runs_app.command("show")
def runs_show(
    run_id: Annotated[int, typer.Argument(help="Run id.")], db: DbOpt = None, json_out: JsonOpt = False,
) -> None:
    """Show one run: status, config and final metrics."""
    _run("store.commands:runs_show", locals())


@db_app.command("upgrade")
def db_upgrade(db: DbOpt = None, json_out: JsonOpt = False) -> None:
    """Upgrade the store's schema to the newest revision (every command also does this on opening a store)."""
    _run("store.commands:db_upgrade", locals())


if __name__ == "__main__":
    app()
