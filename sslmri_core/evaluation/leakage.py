"""The leakage demonstration (``cli.py leakage``): one small model trained four ways.

Split by subject or by image, with the true labels or with labels shuffled *per subject* (every
slice of a subject gets its subject's random label; the subjects' labels are permuted among the
subjects, so each class keeps its number of subjects). Shuffled labels carry no diagnosis, so
any score above chance there measures something else: with an image-level split, slices of each
test subject sit in train and the model scores by recognising the subject (Yagis et al. 2021,
Sci Rep 11:22544); with the subject-level split it scores at chance.

Stored as a ``leakage`` run whose four children are ordinary ``finetune`` runs; the 2x2 result is
its ``leakage`` result. The four children use the same model, budget (optimiser steps), training
seed and split seed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sslmri_core.config import FinetuneConfig, LeakageConfig, to_dict, with_overrides
from sslmri_core.data.loading import ImageSet
from sslmri_core.store.writer import RunStore

UNITS = ("subject", "image")  # how the split groups images; the JSON's outer keys
LABELINGS = ("true", "shuffled")
SPLIT_UNIT = {"subject": "group", "image": "image"}  # FinetuneConfig.split_unit of each
TRAIN_SHARE = 0.7  # of the images, in the product's 70/15/15 split: sets the budget from --epochs
METRIC = "test_balanced_accuracy"
RESULT_NAME = "leakage"


@dataclass
class LeakageResult:
    """Test balanced accuracy ``cells[unit][labels]`` of the four children, and balanced-accuracy chance."""

    run_id: int
    cells: dict[str, dict[str, float]]
    chance: float
    children: dict[str, dict[str, int]]  # unit -> labels -> finetune run id
    steps: int
    n_subjects: int
    subjects_across: dict[str, int]  # unit -> subjects with slices in both train and test (of the true-label child)

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, **self.cells, "chance": self.chance, "children": self.children,
                "steps": self.steps, "n_subjects": self.n_subjects, "subjects_across_train_test": self.subjects_across}

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> LeakageResult:
        """The result as :meth:`to_json` stored it."""
        return cls(int(payload["run_id"]), {u: payload[u] for u in UNITS}, float(payload["chance"]),
                   payload["children"], int(payload["steps"]), int(payload["n_subjects"]),
                   payload["subjects_across_train_test"])


# -- configuration ------------------------------------------------------------------------------------
def resolve_leakage_config(**overrides: Any) -> LeakageConfig:
    """Defaults, then what the user set (``None`` keeps a default); the data path made absolute."""
    cfg = with_overrides(LeakageConfig(), **overrides)
    if cfg.data is not None:
        cfg.data = str(Path(cfg.data).expanduser().resolve())
    if cfg.task is None and cfg.data is not None:
        cfg.task = Path(cfg.data).name
    return cfg


def validate_leakage(cfg: LeakageConfig) -> None:
    """Reject impossible settings with a message naming the option."""
    from sslmri_core.config import PRECISIONS, check_values, refuse_first
    from sslmri_core.train.models import check_model_name

    check_values(cfg)
    checks = [
        (cfg.data is not None, "--data DIR is required: a labelled folder whose file names carry subject ids"),
        (cfg.epochs >= 1, f"--epochs must be at least 1, got {cfg.epochs}"),
        (cfg.steps is None or cfg.steps >= 1, f"--steps must be at least 1, got {cfg.steps}"),
        (cfg.image_size >= 16, f"--image-size must be at least 16, got {cfg.image_size}"),
        (cfg.batch_size >= 2, f"--batch-size must be at least 2, got {cfg.batch_size}"),
        (cfg.bootstrap >= 0, f"--bootstrap must be 0 or more, got {cfg.bootstrap}"),
        (cfg.precision in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)}, got {cfg.precision!r}"),
    ]
    refuse_first(checks)
    if not Path(str(cfg.data)).is_dir():
        raise ValueError(f"--data: no such folder {cfg.data}")
    check_model_name(cfg.model)


def budget_steps(cfg: LeakageConfig, n_images: int) -> int:
    """Optimiser steps of every child: ``--steps``, else ``epochs`` passes over the training share."""
    if cfg.steps is not None:
        return cfg.steps
    return cfg.epochs * max(1, math.ceil(TRAIN_SHARE * n_images / cfg.batch_size))


def child_config(cfg: LeakageConfig, unit: str, labels: str, steps: int) -> FinetuneConfig:
    """The ``finetune`` run of one cell: from scratch, full, the shared budget, seeds and split seed."""
    return FinetuneConfig(
        task=str(cfg.task), data=cfg.data, init="scratch", mode="full", model=cfg.model, image_size=cfg.image_size,
        batch_size=cfg.batch_size, split_unit=SPLIT_UNIT[unit], split_seed=cfg.split_seed,
        class_map=dict(cfg.class_map), epochs=cfg.epochs, steps=steps, min_steps=1, lr=cfg.lr,
        precision=cfg.precision, seed=cfg.seed, out=cfg.out, subject_pattern=cfg.subject_pattern,
        bootstrap=cfg.bootstrap, arm=f"leakage-{unit}-{labels}", augment=dataclasses.replace(cfg.augment),
    )


# -- labels ---------------------------------------------------------------------------------------------
def require_subjects(data: ImageSet) -> None:
    """Refuse a folder whose file names carry no subject id for some image (a one-line reason)."""
    missing = sum(s is None for s in data.subjects)
    if missing:
        raise ValueError(
            f"--data {data.root}: {missing} of {len(data.items)} images have no subject id in the file name; "
            "the leakage demonstration shuffles labels per subject and splits by subject, so it needs one for "
            "every image (pass --subject-pattern REGEX if the names carry it)"
        )


def subject_labels(data: ImageSet) -> dict[str, str]:
    """Each subject's label: its majority class (a subject normally has one); sorted by subject."""
    from sslmri_core.data.splits import group_labels

    majority = group_labels(data.labels, [str(s) for s in data.subjects])
    return {s: data.classes[c] for s, c in majority.items()}


def shuffle_per_subject(data: ImageSet, seed: int) -> ImageSet:
    """A copy of ``data`` whose subjects' labels are permuted among the subjects (class counts of
    subjects kept); every slice of a subject gets its subject's new label. Images are shared."""
    truth = subject_labels(data)
    subjects = list(truth)
    drawn = [truth[subjects[i]] for i in np.random.default_rng(seed).permutation(len(subjects))]
    new = dict(zip(subjects, drawn, strict=True))
    items = [dataclasses.replace(it, label=new[str(it.subject)]) for it in data.items]
    return dataclasses.replace(data, items=items)


def chance_level(n_classes: int) -> float:
    """Expected balanced accuracy of a classifier that ignores the image: 1/K."""
    return 1.0 / n_classes


# -- the run ----------------------------------------------------------------------------------------------
def subjects_across(store: RunStore, run_id: int, data: ImageSet) -> int:
    """How many subjects have images in both train and test of a stored run's split."""
    split_of = store.split_of(run_id)
    sides: dict[str, set[str]] = {}
    for it in data.items:
        sides.setdefault(str(it.subject), set()).add(split_of.get(it.key, ""))
    return sum({"train", "test"} <= s for s in sides.values())


def _check_split(unit: str, crossing: int, run_id: int) -> None:
    """The demonstration is void if the product did not split as asked: fail loudly instead."""
    if unit == "subject" and crossing:
        raise RuntimeError(f"finetune run {run_id}: {crossing} subject(s) in train and test of the subject split")
    if unit == "image" and not crossing:
        raise RuntimeError(f"finetune run {run_id}: no subject has slices in train and test: split_unit='image' "
                           "was not honoured by finetune, so the image split is not the leaky one")


def _load(base: FinetuneConfig) -> ImageSet:
    """The folder, with subject ids for every image; both splits drawn once, so a folder too small to
    split is refused before anything is recorded."""
    from sslmri_core.train.finetune import load_finetune_data, split_data

    data = load_finetune_data(base)
    require_subjects(data)
    for unit in UNITS:
        split_data(data, dataclasses.replace(base, split_unit=SPLIT_UNIT[unit]))
    return data


def _announce(cfg: LeakageConfig, run_id: int, data: ImageSet, steps: int) -> None:
    from sslmri_core.progress import console

    console.print(
        f"leakage run {run_id}: {cfg.model} at {cfg.image_size}px from scratch, {steps} steps x "
        f"{cfg.batch_size} images per child; {len(data.items)} images of {len(subject_labels(data))} subjects, "
        f"{len(data.classes)} classes. Four runs: split by subject / by image x true / per-subject shuffled labels."
    )


def _train_cell(cfg: LeakageConfig, store: RunStore, run_id: int, unit: str, labels: str, data: ImageSet,
                subjects_of: ImageSet, steps: int, show_progress: bool) -> tuple[int, float, int]:
    """One child on ``data`` (true or shuffled labels); returns its run id, test balanced accuracy and how
    many subjects its split put in train and test (checked against what ``unit`` promises)."""
    from sslmri_core.train.finetune import finetune

    child = finetune(child_config(cfg, unit, labels, steps), store, data=data, parent_run_id=run_id,
                     show_progress=show_progress)
    store.log_params(child.run_id, {"leakage_run": run_id, "labels": labels})
    crossing = subjects_across(store, child.run_id, subjects_of)
    _check_split(unit, crossing, child.run_id)
    return child.run_id, float(child.metrics[METRIC]), crossing


def _log_setup(cfg: LeakageConfig, store: RunStore, run_id: int, data: ImageSet, steps: int) -> None:
    store.log_params(run_id, {
        "data_root": data.root, "dataset": store.save_manifest(data.manifests[0]), "n_images": len(data.items),
        "n_subjects": len(subject_labels(data)), "n_classes": len(data.classes), "steps": steps,
        "model": cfg.model, "image_size": cfg.image_size,
    })


def run_leakage(cfg: LeakageConfig, store: RunStore, *, show_progress: bool = True) -> LeakageResult:
    """Train the four children and store the 2x2 result under a ``leakage`` run."""
    from sslmri_core.progress import console
    from sslmri_core.store.lifecycle import open_run

    validate_leakage(cfg)
    data = _load(child_config(cfg, "subject", "true", 1))  # a bad folder: one line, nothing recorded
    steps = budget_steps(cfg, len(data.items))
    sets = {"true": data, "shuffled": shuffle_per_subject(data, cfg.seed)}
    cells: dict[str, dict[str, float]] = {u: {} for u in UNITS}
    children: dict[str, dict[str, int]] = {u: {} for u in UNITS}
    across: dict[str, int] = {}
    with open_run(store, RESULT_NAME, to_dict(cfg), task=cfg.task) as run:
        run_id = run.run_id
        _log_setup(cfg, store, run_id, data, steps)
        _announce(cfg, run_id, data, steps)
        for n, (unit, labels) in enumerate(((u, lab) for u in UNITS for lab in LABELINGS), 1):
            console.print(f"leakage {run_id}: {n}/4 split by {unit}, {labels} labels", style="bold")
            children[unit][labels], cells[unit][labels], crossing = _train_cell(
                cfg, store, run_id, unit, labels, sets[labels], data, steps, show_progress)
            across.setdefault(unit, crossing)
        result = LeakageResult(run_id, cells, chance_level(len(data.classes)), children, steps,
                               len(subject_labels(data)), across)
        store.log_metrics(run_id, {f"{METRIC}_{u}_{lab}": v for u in UNITS for lab, v in cells[u].items()})
        store.log_result(run_id, RESULT_NAME, result.to_json())
        print_result(result)
    return result


# -- the report ---------------------------------------------------------------------------------------------
def verdict(result: LeakageResult, margin: float = 0.15) -> str:
    """One sentence on what the four numbers show."""
    image, subject, chance = result.cells["image"]["shuffled"], result.cells["subject"]["shuffled"], result.chance
    if image - chance >= margin and subject - chance < margin:
        return (f"With labels shuffled per subject the image split scores {image:.2f} (chance {chance:.2f}): the model "
                f"recognises subjects, not disease; the subject split scores {subject:.2f}. Image-level splits leak.")
    if image - chance < margin:
        return (f"The image split with shuffled labels scores {image:.2f} (chance {chance:.2f}): the model did not "
                "learn to recognise subjects in this budget; raise --epochs or --steps to see the leak.")
    return (f"The subject split with shuffled labels scores {subject:.2f} (chance {chance:.2f}): with few test "
            "subjects one draw can land far from chance; repeat with another --seed.")


def print_result(result: LeakageResult) -> None:
    """The 2x2 table and the verdict, on stderr."""
    from rich.table import Table

    from sslmri_core.progress import console

    table = Table(title=f"leakage run {result.run_id}: test balanced accuracy (chance {result.chance:.2f})")
    table.add_column("split by")
    for labels in LABELINGS:
        table.add_column(f"{labels} labels", justify="right")
    table.add_column("subjects in train and test", justify="right")
    for unit in UNITS:
        table.add_row(unit, *(f"{result.cells[unit][lab]:.3f}" for lab in LABELINGS), str(result.subjects_across[unit]))
    console.print(table)
    console.print(verdict(result))
