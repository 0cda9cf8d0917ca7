"""Run configurations: every default lives here, and only here.

The CLI passes options the user left unset as ``None``; :func:`with_overrides` drops them, so
defaults are never restated anywhere else. ``asdict(config)`` is what the run store and every
checkpoint keep.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

# -- name sets: every command validates against these, and nothing else spells them ------------------
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
OPTIMIZERS = ("lars", "adamw", "sgd")  # pretraining also takes "auto" (LARS for large batches)
CAM_METHODS = ("gradcam", "gradcam++", "hirescam", "eigencam", "layercam", "scorecam")
EMBED_METHODS = ("umap", "tsne")
INITS = ("ssl", "scratch", "imagenet")  # where a fine-tuned encoder starts
MODES = ("linear", "full")  # linear: frozen encoder, a trained head; full: everything trains
# How every slice is prepared before it is resized (data.head): crop to the head's bounding box, and/or
# map the 1st-99th intensity percentiles inside the head to 0-255 (scanner brightness stops mattering).
PREPROCESS = ("none", "crop", "norm", "crop+norm")
COMPILE_MODES = ("auto", "on", "off")  # pretrain --compile: auto = torch.compile on CUDA for long runs
# --compile auto compiles only runs of at least this many steps: on an H200 (ResNet-50, 128 px, batch 512)
# compiling cost 44 s and saved 0.023 s per step (15,600 against 11,580 views/s), even after ~1,900 steps.
COMPILE_AUTO_MIN_STEPS = 2000
# An experiment arm is one (init, mode) pair; the order is the display order everywhere.
ARM_SETTINGS: dict[str, tuple[str, str]] = {
    "ssl-linear": ("ssl", "linear"),
    "ssl-full": ("ssl", "full"),
    "scratch": ("scratch", "full"),
    "imagenet": ("imagenet", "full"),
}
ARMS = tuple(ARM_SETTINGS)
SSL_ARMS = tuple(a for a, (init, _) in ARM_SETTINGS.items() if init == "ssl")
BASELINE_ARMS = tuple(a for a in ARMS if a not in SSL_ARMS)
NO_WEIGHTS_ARMS = tuple(a for a in ARMS if ARM_SETTINGS[a][0] != "imagenet")  # run without a weights file


def arm_name(init: str | None, mode: str | None) -> str:
    """The arm of a fine-tuning run's ``init``/``mode`` (``ssl-full`` when an SSL mode is missing)."""
    if init == "ssl":
        return f"ssl-{mode or 'full'}"
    return init or "?"


TASKS: dict[str, list[str]] = {
    "tumor": ["glioma", "meningioma", "notumor", "pituitary"],
    "alzheimer": ["Non Demented", "Very mild Dementia", "Mild Dementia", "Moderate Dementia"],
    "parkinsons": ["normal", "parkinson"],
    "ms": ["lesion", "no_lesion"],
}


@dataclass
class SynthConfig:
    """Built-in synthetic brain-MRI set (``cli.py data synth``)."""

    task: str = "all"  # one of TASKS or "all"
    subjects: int = 10  # synthetic subjects per class
    slices_per_subject: int = 6
    size: int = 128  # output PNG side in pixels
    seed: int = 0


# The built-in data (generated on first use): a labelled set for fine-tuning and testing, and a
# pool of other synthetic subjects (another seed) for pretraining, so SSL never sees a test subject.
# The labelled set is unchanged since the README's Grad-CAM numbers were measured on it (20 subjects x 6
# slices per class); the unlabeled pool (40 x 4 per class) is a third larger than the whole labelled set.
BUILTIN_SETS: dict[str, SynthConfig] = {
    "labeled": SynthConfig(task="all", subjects=20, seed=0),
    "pretrain": SynthConfig(task="all", subjects=40, slices_per_subject=4, seed=1000),
}


@dataclass
class AugmentConfig:
    """Per-sample random augmentations for grayscale MRI (no hue/saturation: meaningless here).

    All-zero strengths (crop_scale_min=1, every probability and range 0) give the identity.
    """

    crop_scale_min: float = 0.35  # random resized crop keeps this share of the area, or more
    crop_ratio: float = 4 / 3  # aspect ratio drawn log-uniformly in [1/r, r]
    flip_p: float = 0.5
    rotate_deg: float = 10.0
    shear_deg: float = 5.0  # small shear, drawn in [-s, s] degrees
    brightness: float = 0.2
    contrast: float = 0.3
    gamma: float = 0.3  # log-uniform in [1/(1+g), 1+g]
    blur_p: float = 0.5
    blur_sigma: float = 1.2  # pixels, at most
    noise_std: float = 0.03
    bias_field: float = 0.0  # smooth multiplicative field exp(+-s) (scanner inhomogeneity); 0: off


NO_AUGMENT = AugmentConfig(
    crop_scale_min=1.0, crop_ratio=1.0, flip_p=0.0, rotate_deg=0.0, shear_deg=0.0, brightness=0.0, contrast=0.0,
    gamma=0.0, blur_p=0.0, noise_std=0.0,
)  # the identity
LIGHT_AUGMENT = AugmentConfig(
    crop_scale_min=0.8, crop_ratio=1.1, rotate_deg=5.0, shear_deg=0.0, brightness=0.1, contrast=0.1, gamma=0.1,
    blur_p=0.0, noise_std=0.0,
)  # fine-tuning: keep the lesion in view


@dataclass
class PretrainConfig:
    """SimCLR pretraining."""

    data: list[str] = field(default_factory=list)  # empty: the built-in synthetic pool
    # More folders for the pool, labels ignored; an image copying one of the --data folders' val/test
    # groups (by content: exact or near copy) is left out and counted.
    unlabeled: list[str] = field(default_factory=list)
    preset: str | None = None  # the recipe applied under the user's options (PRESETS)
    preprocess: str = "none"  # one of PREPROCESS; fine-tuning from this run uses the same
    model: str = "resnet50"
    image_size: int = 128
    batch_size: int = 32
    epochs: int = 10
    max_steps: int | None = None  # stop after this many optimiser steps in total
    # auto: LARS from batch 256 up (SimCLR's large-batch optimiser), AdamW below | lars | adamw | sgd
    optimizer: str = "auto"
    lr: float | None = None  # peak; None: 0.3 x batch/256 for LARS (SimCLR), 0.05 x batch/256 SGD, 1e-3 AdamW
    weight_decay: float = 1e-6  # SimCLR's value (with LARS)
    warmup_epochs: float = 1.0
    temperature: float = 0.2  # SimCLR (Chen et al. 2020), Table 5: 0.1-0.5 work best
    # Slices of one subject are not each other's negatives in NT-Xent (else the encoder learns who a
    # slice belongs to rather than what it shows); images without a subject id are their own subject.
    mask_same_subject: bool = True
    compile: str = "auto"  # torch.compile the model: auto (on CUDA only) | on | off
    proj_hidden_dim: int = 512
    proj_dim: int = 128
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    precision: str = "auto"  # auto (bf16 where supported, else fp16 on CUDA, else fp32) | bf16 | fp16 | fp32
    # Per-epoch representation quality, when the pool's images have labels (class folders):
    # cosine kNN accuracy (train-split features as the bank, val-split as queries) and an online
    # linear probe trained on detached features of the training batches.
    monitor: bool = True
    knn_k: int = 20
    knn_bank: int = 2000  # at most this many labelled train images in the bank
    knn_queries: int = 500  # at most this many val images scored
    monitor_share: float = 0.1  # bank and queries shrink so the monitor costs at most this share of an epoch
    probe_lr: float = 1e-3
    seed: int = 0
    out: str = "runs"
    subject_pattern: str | None = None
    # Leave out the test subjects of each --data folder (its given test split, or the 70/15/15
    # subject split drawn with split_seed), so a model fine-tuned and tested on it never saw them.
    exclude_test: bool = True
    exclude_val: bool = False  # also leave the val split out of the SSL pool (val images stay kNN queries)
    split_seed: int = 0
    # The split left out is the one fine-tuning draws with the same settings: the same class map
    # (classes stratify the split), given split and fold (``experiment --folds``) as the children.
    class_map: dict[str, str] = field(default_factory=dict)
    use_given_split: bool = False
    allow_leaky_split: bool = False
    folds: int | None = None
    fold: int | None = None
    # Besides the checkpoint at every epoch end, one mid-epoch when this long has passed since the
    # last (so a killed run loses at most this much work); 0: epoch ends only.
    checkpoint_minutes: float = 10.0


@dataclass
class FinetuneConfig:
    """Classifier training on a labelled folder, from an SSL run or from scratch."""

    task: str = "tumor"
    data: str | None = None  # None: the built-in synthetic set for ``task``
    preset: str | None = None  # the recipe applied under the user's options (PRESETS)
    preprocess: str = "none"  # one of PREPROCESS; taken from the pretraining run when from_run is set
    from_run: int | None = None  # SSL pretraining run to start from
    init: str = "ssl"  # ssl (needs from_run) | scratch | imagenet (needs weights)
    weights: str | None = None  # --init imagenet: a local timm weights file (.pth/.pt/.bin/.safetensors)
    model: str = "resnet50"  # taken from the pretraining run when from_run is set
    image_size: int = 128  # taken from the pretraining run when from_run is set
    batch_size: int = 32
    mode: str = "full"  # linear (frozen encoder) | full
    encoder_lr_scale: float = 1.0  # full mode: the encoder's learning rate is lr x this (the head's is lr)
    class_weighted: bool = True  # cross-entropy weighted by inverse class frequency of the labelled images
    label_smoothing: float = 0.0
    tta: bool = False  # predictions averaged over the image and its left-right flip
    label_fraction: float = 1.0
    labels_per_class: int | None = None  # instead of a fraction: whole subjects until N images per class
    use_given_split: bool = False  # honour the data set's Training/Testing folders (refused when groups cross them)
    # keep a given split whose subjects / duplicates cross it (the run is flagged leakage-prone)
    allow_leaky_split: bool = False
    split_unit: str = "group"  # group (subject, else duplicate component) | image (leaky on purpose: `leakage` demo)
    split_seed: int = 0  # the split is fixed by this; ``seed`` varies training and the label draw
    folds: int | None = None  # k-fold cross-validation over groups: this run tests fold ``fold`` of ``folds``
    fold: int | None = None
    class_map: dict[str, str] = field(default_factory=dict)  # rename / merge class folders
    augment: AugmentConfig = field(default_factory=lambda: dataclasses.replace(LIGHT_AUGMENT))
    epochs: int = 10  # sets the budget when ``steps`` is None: epochs x batches per epoch, at least min_steps
    steps: int | None = None  # optimiser steps in all (experiment: the same for every arm at one fraction)
    min_steps: int = 300  # never fewer optimiser steps than this (a tiny label budget still trains)
    warmup_share: float = 0.05  # linear warm-up over this share of the steps, then cosine decay
    lr: float = 1e-3
    weight_decay: float = 1e-4
    precision: str = "auto"
    seed: int = 0
    out: str = "runs"
    subject_pattern: str | None = None
    bootstrap: int = 1000  # bootstrap resamples (by subject) for the 95% intervals of val/test metrics
    ece_bins: int = 15  # equal-width confidence bins for ECE and the reliability diagram
    arm: str | None = None  # the experiment arm (ssl-linear, ssl-full, scratch, imagenet); set by `experiment`
    experiment_run: int | None = None  # the experiment run this run belongs to


@dataclass
class ExperimentConfig:
    """The SSL-vs-supervised grid (``cli.py experiment``): every arm x label fraction x seed."""

    task: str = "tumor"
    data: str | None = None  # None: the built-in synthetic set for ``task``
    fractions: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0])
    unlabeled: list[str] = field(default_factory=list)  # more SSL pool folders (PretrainConfig.unlabeled)
    preprocess: str = "none"  # one of PREPROCESS, for pretraining and every child
    seeds: int = 3  # training/label-draw seeds 0..seeds-1; the split seed stays fixed
    arms: list[str] = field(default_factory=lambda: list(NO_WEIGHTS_ARMS))
    pretrain_run: int | None = None  # reuse this SSL run instead of pretraining
    pretrain_epochs: int = 10
    model: str = "resnet50"
    image_size: int = 128
    batch_size: int = 32
    pretrain_batch_size: int | None = None  # SimCLR's batch; None: batch_size
    finetune_epochs: int = 10  # every arm: the budget of a fraction is epochs x batches of its labelled set, in steps
    lr: float = 1e-3
    encoder_lr_scale: float = 1.0  # ssl-full / imagenet: encoder lr = lr x this
    weights: str | None = None  # imagenet arm: local timm weights file
    min_steps: int = 300  # every child at one fraction gets max(min_steps, epochs x batches) optimiser steps
    split_seed: int = 0
    use_given_split: bool = False
    allow_leaky_split: bool = False
    folds: int | None = None  # k-fold cross-validation over groups (every group tested once); None: one 70/15/15 split
    subject_pattern: str | None = None
    class_map: dict[str, str] = field(default_factory=dict)
    precision: str = "auto"
    bootstrap: int = 1000
    out: str = "runs"
    preset: str | None = None


# Fine-tuning augmentation of the recipes: LIGHT_AUGMENT plus the intensity and sharpness changes another
# scanner brings (brightness, contrast, gamma, blur, noise, bias field), so a model carries across sources.
RECIPE_AUGMENT = dataclasses.replace(
    LIGHT_AUGMENT, brightness=0.25, contrast=0.3, gamma=0.3, blur_p=0.3, blur_sigma=1.0, noise_std=0.02,
    bias_field=0.2)

# ``--preset NAME`` of pretrain, finetune and experiment: settings applied under the user's own options
# (defaults, then the preset, then the options). Chosen by measurement on validation splits: README,
# "Recipes". An experiment's children take the finetune recipe and its pretraining the pretrain recipe.
_CPU = {"model": "resnet18", "image_size": 128, "preprocess": "crop+norm"}  # 2 CPU cores
_GPU = {"model": "resnet50", "image_size": 128, "preprocess": "crop+norm"}  # one modern GPU (an H200: README)
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "cpu": {
        "pretrain": {**_CPU, "batch_size": 128, "epochs": 15},
        "finetune": {**_CPU, "batch_size": 64, "epochs": 30, "label_smoothing": 0.1, "tta": True,
                     "augment": RECIPE_AUGMENT},
        "experiment": {**_CPU, "batch_size": 64, "pretrain_batch_size": 128, "pretrain_epochs": 15,
                       "finetune_epochs": 30, "seeds": 2},
    },
    "gpu": {
        "pretrain": {**_GPU, "batch_size": 512, "epochs": 50},
        "finetune": {**_GPU, "batch_size": 128, "epochs": 30, "label_smoothing": 0.1, "tta": True,
                     "augment": RECIPE_AUGMENT},
        "experiment": {**_GPU, "batch_size": 128, "pretrain_batch_size": 512, "pretrain_epochs": 50,
                       "finetune_epochs": 30, "seeds": 3},
    },
}


def preset_settings(preset: str | None, command: str) -> dict[str, Any]:
    """The settings ``--preset NAME`` gives ``command`` (pretrain | finetune | experiment), fresh copies;
    {} without a preset. An unknown name is a ValueError naming the option."""
    if preset is None:
        return {}
    if preset not in PRESETS:
        raise ValueError(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    settings = {k: dataclasses.replace(v) if dataclasses.is_dataclass(v) else v  # type: ignore[type-var]
                for k, v in PRESETS[preset][command].items()}
    return {**settings, "preset": preset}


@dataclass
class GradcamConfig:
    """Grad-CAM maps and their statistics for a fine-tuned run's scans (``cli.py gradcam``)."""

    run: int | None = None  # the fine-tuning run whose checkpoint is explained
    split: str = "test"  # train | val | test of that run's stored split
    method: str = "gradcam"  # gradcam | gradcam++ | hirescam | eigencam | layercam | scorecam
    target_layer: str | None = None  # module name; None: the deepest stage with an 8x8 map or more
    target_class: str | None = None  # class name; None: each scan's predicted class
    limit: int | None = None  # at most this many scans (a seeded sample across the split)
    threshold: float = 0.5  # activation area = share of the normalised map at or above this
    topk_pct: float = 20.0  # faithfulness: remove this share of the image, most-activated first
    # ROADCombined percentiles; 80 removes the 20% most (MoRF) and the 20% least (LeRF) relevant pixels.
    # Each percentile costs two sparse solves per scan (~0.06 s at 80, ~0.7 s at 20 for 128 px); [] skips ROAD.
    road_percentiles: list[int] = field(default_factory=lambda: [80])
    lesion_dilate_px: int = 3  # pointing game: a hit within this many pixels of the lesion counts
    batch_size: int = 32
    precision: str = "fp32"  # auto | bf16 | fp32 (the CAM arithmetic itself is always fp32)
    seed: int = 0  # random-removal baseline and ROAD's imputation noise
    out: str = "runs"


@dataclass
class OverlayConfig:
    """How a Grad-CAM map is drawn over its scan (the Scan Explorer's slider defaults)."""

    opacity: float = 0.4
    colormap: str = "jet"  # any matplotlib colormap
    threshold: float = 0.2  # the map is drawn only where it is at least this (0-1, per image)


@dataclass
class ReportConfig:
    """A one-page PDF of one scan (``cli.py report``). Never stored: a report reads the store and
    trains nothing, so it is not a run (the PDF itself names the model run it shows)."""

    run: int | None = None  # the fine-tuning run whose model reads the scan
    scan: str | None = None  # a scan key the run stored (path or path#z=k), or any image file
    out: str | None = None  # the .pdf to write; never an existing file
    window: list[float] = field(default_factory=lambda: [0.0, 255.0])  # grey window (low, high), 0-255 units
    method: str = "gradcam"  # CAM method; stored statistics of this method are shown when the scan has them
    overlay: OverlayConfig = field(default_factory=OverlayConfig)
    precision: str = "fp32"  # of the model's passes
    display_size: int = 256  # side of the images drawn on the page (the model still reads its own size)


@dataclass
class LeakageConfig:
    """The leakage demonstration (``cli.py leakage``). Defaults sized for <= 10 min on 2 CPU cores: OASIS
    (5,734 slices, 25 subjects) took 5 min 08 s on an idle 2-core machine, fresh image cache (504 steps per child)."""

    data: str | None = None  # a labelled folder whose file names carry subject ids (required)
    task: str | None = None  # recorded with the runs; None: the data folder's name
    model: str = "resnet18"
    image_size: int = 64
    batch_size: int = 64
    epochs: int = 8  # budget when ``steps`` is None: epochs over 70% of the images, the same steps for all four
    steps: int | None = None  # optimiser steps of every child
    lr: float = 1e-3
    seed: int = 0  # training seed (same for all four) and the draw of the shuffled labels
    split_seed: int = 0  # the split seed of all four children
    subject_pattern: str | None = None
    class_map: dict[str, str] = field(default_factory=dict)
    # fine-tuning's own by default; augmentation hides some of the leak (memorising a patient is harder on
    # jittered slices), so a small demonstration may turn it off (the demo does)
    augment: AugmentConfig = field(default_factory=lambda: dataclasses.replace(LIGHT_AUGMENT))
    precision: str = "auto"
    bootstrap: int = 0  # subject-bootstrap resamples per child: the demonstration needs point estimates only
    out: str = "runs"


@dataclass
class DemoConfig:
    """What ``make demo`` runs on the built-in data (sized for <= 10 min on 2 CPU cores, README "The demo"):
    an SSL-vs-supervised experiment (every arm x fraction x seed at one budget per fraction), the data
    audit, the leakage demonstration, Grad-CAM of one fine-tuned model and a map of the SSL encoder."""

    task: str = "tumor"
    model: str = "resnet18"
    image_size: int = 64
    batch_size: int = 32
    fractions: list[float] = field(default_factory=lambda: [0.05, 0.2, 1.0])
    seeds: int = 2
    pretrain_epochs: int = 20
    finetune_epochs: int = 6  # the budget of a fraction: epochs x batches of its labelled set, at least min_steps
    min_steps: int = 100
    preprocess: str = "none"
    bootstrap: int = 1000
    leakage_image_size: int = 48
    leakage_steps: int = 150  # optimiser steps of each of the leakage demonstration's four children
    leakage_augment: AugmentConfig = field(default_factory=lambda: dataclasses.replace(NO_AUGMENT))
    gradcam_limit: int | None = None  # Grad-CAM of at most this many test scans; None: all of them
    precision: str = "auto"


# Ranges of numeric settings, by field name (a name means the same in every config). Every float
# must also be finite. ``check_values`` applies both; each command's validation calls it first.
MAX_RUN_ID = 2**63 - 1  # the store's BIGINT
BOUNDS: dict[str, tuple[float, float]] = {
    "lr": (1e-12, 100.0), "probe_lr": (1e-12, 100.0), "weight_decay": (0.0, 10.0),
    "warmup_epochs": (0.0, 1e6), "warmup_share": (0.0, 0.5), "temperature": (1e-3, 100.0),
    "encoder_lr_scale": (0.0, 100.0), "label_fraction": (1e-9, 1.0), "checkpoint_minutes": (0.0, 1e6),
    "threshold": (0.0, 1.0), "topk_pct": (1e-9, 100.0), "opacity": (0.0, 1.0), "display_size": (32, 2048),
    "crop_scale_min": (1e-3, 1.0), "crop_ratio": (1.0, 10.0), "flip_p": (0.0, 1.0), "blur_p": (0.0, 1.0),
    "rotate_deg": (0.0, 180.0), "shear_deg": (0.0, 60.0), "brightness": (0.0, 1.0), "contrast": (0.0, 1.0),
    "gamma": (0.0, 10.0), "blur_sigma": (0.0, 20.0), "noise_std": (0.0, 1.0), "bias_field": (0.0, 3.0),
    "seed": (0, 2**32 - 1), "split_seed": (0, 2**32 - 1),
    "from_run": (1, MAX_RUN_ID), "pretrain_run": (1, MAX_RUN_ID), "run": (1, MAX_RUN_ID),
    "experiment_run": (1, MAX_RUN_ID), "label_smoothing": (0.0, 0.5), "monitor_share": (0.0, 1.0),
}


def check_values(config: Any, prefix: str = "--") -> None:
    """Refuse (UsageError naming the option) a non-finite float or a value outside :data:`BOUNDS`."""
    from sslmri_core.errors import UsageError

    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        option = prefix + (f.name if prefix.endswith(" ") else f.name.replace("_", "-"))  # --augment name=value
        if dataclasses.is_dataclass(value):
            check_values(value, f"{option} ")
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"{option} must be a finite number, got {value}")
        lo, hi = BOUNDS.get(f.name, (-math.inf, math.inf))
        if not lo <= value <= hi:
            raise UsageError(f"{option} must be between {_number(lo)} and {_number(hi)}, got {_number(value)}")


def refuse_first(checks: Iterable[tuple[bool, str]]) -> None:
    """Raise ``ValueError(message)`` for the first ``(ok, message)`` whose ``ok`` is false: a validator's
    option checks in the order they are listed."""
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def with_overrides(config: T, **overrides: Any) -> T:
    """Return a copy of ``config`` with every override that is not ``None`` applied."""
    names = {f.name for f in dataclasses.fields(config)}  # type: ignore[arg-type]
    unknown = set(overrides) - names
    if unknown:
        raise TypeError(f"unknown config field(s): {sorted(unknown)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(config, **given)  # type: ignore[type-var]


def parse_settings(config: T, text: str, option: str) -> T:
    """``config`` with ``"name=value,name=value"`` applied (values converted to each field's type)."""
    changes: dict[str, Any] = {}
    fields_by_name = {f.name: f for f in dataclasses.fields(config)}  # type: ignore[arg-type]
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, raw = part.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in fields_by_name:
            known = ", ".join(fields_by_name)
            raise ValueError(f"{option}: expected name=value with a name among {known}; got {part!r}")
        current = getattr(config, name)
        try:
            changes[name] = type(current)(float(raw)) if isinstance(current, (int, float)) else raw.strip()
        except ValueError:
            raise ValueError(f"{option}: {name} must be a number, got {raw!r}") from None
    return dataclasses.replace(config, **changes)  # type: ignore[type-var]


def to_dict(config: Any) -> dict[str, Any]:
    """JSON-ready dict of a config dataclass."""
    return dataclasses.asdict(config)


def from_dict(cls: type[T], values: dict[str, Any]) -> T:
    """Rebuild a config from a stored dict, ignoring keys this version no longer knows."""
    kept = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in values:
            value = values[f.name]
            if f.name == "augment" and isinstance(value, dict):
                value = from_dict(AugmentConfig, value)
            kept[f.name] = value
    return cls(**kept)
