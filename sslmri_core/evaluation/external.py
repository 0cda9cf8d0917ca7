"""Scoring a fine-tuned model on an external labelled folder (``cli.py evaluate``), as its own run."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np

from sslmri_core.config import FinetuneConfig
from sslmri_core.data.groups import GROUP_SIZE, ContentIndex
from sslmri_core.data.loading import load_folder
from sslmri_core.store.status import RunRecord
from sslmri_core.store.writer import RunStore

SPLIT = "test"  # the external folder is all test: metrics are test_*, like a finetune run's


@dataclass
class ExternalResult:
    """What ``evaluate`` reports: its run, the model's run, the test metrics and what was (not) scored."""

    run_id: int
    model_run: int
    metrics: dict[str, float]
    files: int
    usable: int
    unusable: list[dict[str, str]]
    out_dir: str
    overlap: list[str]  # images that copy (exactly or nearly) the model's training or SSL images
    overlap_excluded: int  # of those, left out of the score (0 with keep_overlap)


def match_classes(found: list[str], model_classes: list[str], root: str) -> dict[str, str]:
    """Folder class -> model class, by name (exact, else ignoring case and surrounding spaces).

    A folder class the model does not know, or a model class the folder lacks, is an error.
    """
    folded = {c.strip().casefold(): c for c in model_classes}
    mapping = {c: c if c in model_classes else folded.get(c.strip().casefold(), "") for c in found}
    unknown = sorted(c for c, m in mapping.items() if not m)
    missing = sorted(set(model_classes) - set(mapping.values()))
    if unknown:
        raise ValueError(f"--data {root}: class folder(s) {', '.join(map(repr, unknown))} are not among the model's "
                         f"classes ({', '.join(map(repr, model_classes))}); rename them or use the model's --class-map")
    if missing:
        raise ValueError(f"--data {root}: no usable images of the model's class(es) {', '.join(map(repr, missing))}; "
                         f"the folder has {', '.join(map(repr, found))}")
    return mapping


def seen_index(store: RunStore, record: RunRecord, cfg: FinetuneConfig) -> ContentIndex:
    """What the model of ``record`` has seen, by content: its train and val images (thumbnails from
    its data folder; file hashes alone when that folder is gone) and its SSL encoder's pool."""
    from sslmri_core.data.ingest import build_manifest
    from sslmri_core.train.pool import pool_index

    seen = {key: h for key, split, h, _ in store.split_content(record.id) if split in ("train", "val")}
    parts = []
    root = store.params(record.id).get("data_root")
    if root and Path(root).is_dir():
        manifest, thumbs = build_manifest(root, GROUP_SIZE, cfg.subject_pattern, cfg.class_map)
        rows = [i for i, r in enumerate(manifest.usable) if r.key in seen]
        parts.append(ContentIndex.build([manifest.usable[i].content_hash for i in rows], thumbs[rows]))
    else:
        parts.append(ContentIndex.hashes_only([h for h in seen.values() if h]))
    if cfg.from_run is not None:
        parts.append(pool_index(store, cfg.from_run))
    return ContentIndex.concat(parts)


def evaluate_external(
    store: RunStore, run_id: int, data_dir: str | Path, *, bootstrap: int | None = None, out: str | None = None,
    keep_overlap: bool = False, class_map: dict[str, str] | None = None,
) -> ExternalResult:
    """Score run ``run_id``'s selected weights on the usable images of ``data_dir`` that are not copies
    of what the model saw (its train/val images, its SSL pool; all of them with ``keep_overlap``);
    store an ``evaluate`` run (parent: the model's run) with metrics, intervals, confusions and predictions.
    ``class_map`` renames the folder's classes to the model's (``glioma_tumor=glioma``); without one the
    model's own class map applies (a folder laid out like its training folder)."""
    import torch

    from sslmri_core.data.unusable import write_unusable
    from sslmri_core.evaluation.metrics import evaluate_split
    from sslmri_core.progress import console
    from sslmri_core.store.lifecycle import open_run
    from sslmri_core.train.checkpoints import checkpoint_of, classifier_from
    from sslmri_core.train.finetune import log_evaluation, units
    from sslmri_core.train.predict import predict
    from sslmri_core.train.runtime import device_name, pick_device, resolve_precision

    found = checkpoint_of(store, run_id, kinds=("finetune",), use="evaluate scores a fine-tuned (finetune) run",
                          finished=True)
    record = found.record
    model = classifier_from(found.state, f"--run {run_id}", record.config)
    cfg, classes = model.cfg, model.classes
    root = str(Path(data_dir).expanduser().resolve())
    data = load_folder(root, cfg.image_size, cfg.subject_pattern, class_map or cfg.class_map, cfg.preprocess)
    mapping = match_classes(data.classes, classes, root)
    data = dataclasses.replace(
        data, classes=classes, items=[dataclasses.replace(it, label=mapping[it.label]) for it in data.items])
    report = data.manifests[0].check_summary()  # the ``data check`` report: a dict of documented types
    files, usable = cast(int, report["files"]), cast(int, report["usable"])
    unusable = cast("list[dict[str, str]]", report["unusable"])
    n_boot = cfg.bootstrap if bootstrap is None else bootstrap
    if n_boot < 0:
        raise ValueError(f"--bootstrap must be 0 or more, got {n_boot}")
    assert data.thumbs is not None and data.grouping is not None
    copies = seen_index(store, record, cfg).matches([it.content_hash for it in data.items], data.thumbs)
    overlap = [data.items[i].key for i in np.flatnonzero(copies)]
    scored = np.arange(len(data.items)) if keep_overlap else np.flatnonzero(~copies)
    if len(scored) == 0:
        raise ValueError(f"--data {root}: all {len(data.items)} images copy images model run {run_id} trained, "
                         "selected or pretrained on; nothing is left to score (--keep-overlap scores them anyway)")
    reasons = [f"{len(overlap)} scored image(s) copy the model's training or SSL images (--keep-overlap)"] \
        if keep_overlap and overlap else []

    device = pick_device()
    precision = resolve_precision(cfg.precision, device)
    config = {"model_run": run_id, "data": root, "bootstrap": n_boot, "model": cfg.model,
              "image_size": cfg.image_size, "classes": classes, "class_map": class_map or cfg.class_map,
              "subject_pattern": cfg.subject_pattern, "out": out or cfg.out, "keep_overlap": keep_overlap}
    with open_run(store, "evaluate", config, out=out or cfg.out, task=record.task, parent_run_id=run_id,
                  device=device_name(device)) as run:
        eval_id, out_dir = run.run_id, run.folder
        store.log_params(eval_id, {
            "model_run": run_id, "data_root": root, "dataset": store.save_manifest(data.manifests[0]),
            "n_files": files, "n_test": len(scored), "n_unusable": len(unusable),
            "split_level": data.grouping.level, "overlap": len(overlap),
            "overlap_excluded": 0 if keep_overlap else len(overlap),
            "leakage_prone": bool(reasons), "leakage_reasons": json.dumps(reasons),
            "classes": json.dumps(classes), "precision": precision,
        })
        write_unusable(out_dir, data.unusable)
        write_unusable(out_dir, [(key, "copies an image the model trained, selected or pretrained on")
                                 for key in overlap], "overlap.tsv")
        console.print(
            f"evaluate run {eval_id}: model run {run_id} ({cfg.model} at {cfg.image_size}px) on {root}: "
            f"{len(scored)} images scored, {len(overlap)} overlapping the model's training or SSL images "
            f"({'kept' if keep_overlap else 'left out, listed in overlap.tsv'}), "
            f"{len(unusable)} of {files} files unusable")
        classifier = model.model.to(device).to(memory_format=torch.channels_last)
        probs = predict(classifier, torch.from_numpy(data.images), scored, device, precision, tta=cfg.tta)
        result = evaluate_split(data.labels[scored], probs, units(data, scored, data.grouping.keys), classes, SPLIT,
                                n_boot=n_boot, seed=0, n_bins=cfg.ece_bins)
        store.log_metrics(eval_id, result.metrics)
        log_evaluation(store, eval_id, data, scored, probs, result, SPLIT, data.grouping.keys)
    return ExternalResult(eval_id, run_id, result.metrics, files, usable, list(unusable), str(out_dir), overlap,
                          0 if keep_overlap else len(overlap))
