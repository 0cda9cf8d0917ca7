"""``cli.py gradcam``: CAMs of a fine-tuned run's scans as a tracked run of kind ``gradcam``.

The scans are the fine-tuning run's own split (its stored split assignments over its data
folder), so the test scans explained are exactly the ones it was scored on. Every map is saved as
an 8-bit PNG under ``<run out_dir>/cams/`` and its statistics go to the ``cam_stats`` table, with
the deletion test's two model-free references (a random region inside the head and the head's
core, :mod:`~sslmri_core.explain.faithfulness`) and the pointing game's chance level.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sslmri_core.config import (
    PRECISIONS,
    FinetuneConfig,
    GradcamConfig,
    check_values,
    from_dict,
    refuse_first,
    to_dict,
)
from sslmri_core.explain.cam import (
    LoadedModel,
    cams_as_scored,
    check_method,
    model_from_checkpoint,
    to_input,
)
from sslmri_core.explain.cam_stats import brain_mask, map_stats
from sslmri_core.explain.faithfulness import deletion_drops, road_scores
from sslmri_core.progress import console, make_progress
from sslmri_core.store.lifecycle import open_run
from sslmri_core.store.status import RunRecord
from sslmri_core.store.writer import RunStore
from sslmri_core.train.checkpoints import checkpoint_of
from sslmri_core.train.runtime import seed_everything

SPLIT_NAMES = ("train", "val", "test")
SUMMARY_KEYS = ("run_id", "scans", "method", "mean_confidence", "mean_area_pct", "mean_in_brain", "deletion_drop",
                "random_drop", "baseline_drop", "road", "pointing_game", "pointing_game_chance", "lesion_energy")


@dataclass
class GradcamResult:
    run_id: int
    out_dir: str
    summary: dict[str, Any]  # exactly SUMMARY_KEYS
    missing: int  # scans of the split no longer found in the data folder


def validate_gradcam(cfg: GradcamConfig) -> None:
    """Reject impossible settings (non-finite or out-of-range numbers first) with a message naming the option."""
    check_values(cfg)
    if cfg.run is None:
        raise ValueError("--run: say which fine-tuning run to explain (python cli.py runs list --kind finetune)")
    check_method(cfg.method)
    checks = [
        (cfg.split in SPLIT_NAMES, f"--split must be one of {', '.join(SPLIT_NAMES)}, got {cfg.split!r}"),
        (0.0 < cfg.topk_pct < 100.0, f"--topk-pct must be in (0, 100), got {cfg.topk_pct}"),
        (cfg.limit is None or cfg.limit >= 1, f"--limit must be at least 1, got {cfg.limit}"),
        (cfg.batch_size >= 1, f"--batch-size must be at least 1, got {cfg.batch_size}"),
        (cfg.precision in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)}, got {cfg.precision!r}"),
        (all(0 < int(p) < 100 for p in cfg.road_percentiles),
         f"--road-percentiles must lie in (0, 100), got {cfg.road_percentiles}"),
    ]
    refuse_first(checks)


def _load_run_model(
    cfg: GradcamConfig, run_id: int, store: RunStore
) -> tuple[RunRecord, LoadedModel, FinetuneConfig, str]:
    """The fine-tuning run to explain, its classifier ready for CAMs, its config and its checkpoint file."""
    found = checkpoint_of(store, run_id, use="Grad-CAM explains fine-tuning runs")
    loaded = model_from_checkpoint(found.state, run_id, precision=cfg.precision, target_layer=cfg.target_layer)
    return found.record, loaded, from_dict(FinetuneConfig, found.state.get("config") or found.record.config), \
        str(found.path)


def _read_mask(path: str | None, size: int) -> np.ndarray | None:
    """A lesion mask saved beside its image, at the model's size (resized like the image); None if absent or empty."""
    from sslmri_core.data.decode import decode_image

    if not path or not Path(path).is_file():
        return None
    mask = decode_image(path, size) > 127
    return mask if mask.any() else None


def _mean(values: list[Any]) -> float | None:
    kept = [float(v) for v in values if v is not None and np.isfinite(float(v))]
    return float(np.mean(kept)) if kept else None


def _heatmap_name(n: int, key: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(key.split("#z=")[0]).stem)[:80]
    z = key.split("#z=")[1] if "#z=" in key else None
    return f"{n:05d}_{stem}" + (f"_z{z}" if z is not None else "") + ".png"


def run_gradcam(cfg: GradcamConfig, store: RunStore, *, show_progress: bool = True) -> GradcamResult:
    """Explain the scans of a fine-tuning run's split; store maps and statistics as a ``gradcam`` run."""
    from sslmri_core.train.finetune import load_finetune_data

    validate_gradcam(cfg)
    assert cfg.run is not None  # validate_gradcam refuses a config without one
    model_run = cfg.run
    record, loaded, ft_cfg, checkpoint = _load_run_model(cfg, model_run, store)
    target = None
    if cfg.target_class is not None:
        if cfg.target_class not in loaded.classes:
            raise ValueError(f"--target-class: run {model_run} has no class {cfg.target_class!r} "
                             f"(classes: {', '.join(loaded.classes)})")
        target = loaded.classes.index(cfg.target_class)
    assignment = store.split_of(model_run)
    wanted = {k for k, s in assignment.items() if s == cfg.split}
    if not wanted:
        raise ValueError(f"--split {cfg.split}: run {model_run} stored no {cfg.split} images")
    data = load_finetune_data(ft_cfg)
    idx = [i for i, it in enumerate(data.items) if it.key in wanted]
    missing = len(wanted) - len(idx)
    if not idx:
        raise ValueError(f"none of run {model_run}'s {len(wanted)} {cfg.split} images are in {data.root} any more")
    if cfg.limit is not None and cfg.limit < len(idx):
        # a seeded sample across the split, kept in folder order: the first N would be one class's scans
        keep = np.random.default_rng(cfg.seed).choice(len(idx), size=cfg.limit, replace=False)
        idx = [idx[i] for i in sorted(keep)]

    rows: list[dict[str, Any]] = []
    with open_run(store, "gradcam", to_dict(cfg), out=cfg.out, task=record.task, parent_run_id=model_run,
                  device=loaded.device) as run:
        run_id, out_dir = run.run_id, run.folder
        (out_dir / "cams").mkdir(parents=True, exist_ok=True)
        store.log_params(run_id, {"model_run_id": model_run, "checkpoint": checkpoint,
                                  "target_layer": loaded.target_layer, "precision": loaded.precision,
                                  "data_root": data.root, "n_scans": len(idx), "n_missing": missing})
        console.print(f"gradcam run {run_id}: {cfg.method} on {loaded.target_layer} of finetune run {model_run}, "
                      f"{len(idx)} {cfg.split} scans of {data.root}")
        if missing:
            console.print(f"{missing} of the run's {len(wanted)} {cfg.split} images are no longer in "
                          f"{data.root} (moved, deleted or now unusable): not explained", style="yellow")
        rng = np.random.default_rng(cfg.seed)
        seed_everything(cfg.seed)  # ROAD's imputation noise draws from torch
        with make_progress(show_progress) as progress:
            bar = progress.add_task(f"gradcam ({cfg.method})", total=len(idx), info="", ips=0.0)
            for start in range(0, len(idx), cfg.batch_size):
                t0 = time.perf_counter()
                sel = idx[start : start + cfg.batch_size]
                rows += _explain_batch(cfg, loaded, data, sel, target, rng, out_dir, checkpoint, len(rows))
                progress.update(bar, advance=len(sel), ips=len(sel) / (time.perf_counter() - t0))
        store.log_cam_stats(run_id, rows)
        summary = _summary(run_id, cfg.method, rows)
        store.log_result(run_id, "summary", summary)
        store.log_metrics(run_id, {k: float(v) for k, v in summary.items()
                                   if k not in ("run_id", "method") and v is not None})
    return GradcamResult(run_id, str(out_dir), summary, missing)


def _explain_batch(cfg: GradcamConfig, loaded: LoadedModel, data: Any, sel: list[int], target: int | None,
                   rng: np.random.Generator, out_dir: Path, checkpoint: str, offset: int) -> list[dict[str, Any]]:
    """CAMs, statistics and heat-map files of the images ``sel`` (indices into ``data``)."""
    images = data.images[sel]  # uint8 (B, S, S)
    x = to_input(images, loaded.device)
    cb, probs = cams_as_scored(loaded, images, x, cfg.method, target)  # probs: as the run scored them
    confidence = cb.probs[np.arange(len(sel)), cb.targets]  # the CAM pass's own: the deletion drops start there
    heads = np.stack([brain_mask(im) for im in images])
    drops = deletion_drops(loaded.model, x, cb.cams, cb.targets, confidence, topk_pct=cfg.topk_pct, rng=rng,
                           heads=heads, precision=loaded.precision)
    road = road_scores(loaded.model, x, cb.cams, cb.targets, cfg.road_percentiles, loaded.precision)
    out = []
    for j, i in enumerate(sel):
        item = data.items[i]
        stats = map_stats(cb.cams[j], threshold=cfg.threshold, brain=heads[j],
                          lesion=_read_mask(item.mask_path, images.shape[-1]), dilate_px=cfg.lesion_dilate_px)
        name = _heatmap_name(offset + j, item.key)
        Image.fromarray(np.round(cb.cams[j] * 255).astype(np.uint8), mode="L").save(out_dir / "cams" / name,
                                                                                   optimize=True)
        pred = int(probs[j].argmax())
        out.append({
            "model_run_id": cfg.run, "checkpoint": checkpoint, "method": cfg.method, "split": cfg.split,
            "scan": item.key, "subject": item.subject, "true_label": item.label,
            "target_label": loaded.classes[int(cb.targets[j])], "pred_label": loaded.classes[pred],
            "confidence": float(probs[j, cb.targets[j]]), "raw_max": float(cb.raw_max[j]),
            "raw_mean": float(cb.raw_mean[j]),
            "deletion_drop": float(drops.deletion[j]), "random_drop": float(drops.random[j]),
            "baseline_drop": float(drops.baseline[j]),
            "road": None if road is None else float(road[j]), "heatmap_path": f"cams/{name}", **stats,
        })
    return out


def _summary(run_id: int, method: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``--json`` line: means over scans.

    ``pointing_game`` and ``pointing_game_chance`` (the hit rate of a random point inside the head) are
    means over the correctly classified scans with a lesion mask: a wrong prediction's map explains
    another class, so where it points says nothing about finding the lesion. ``lesion_energy`` is over
    all scans with a lesion mask."""
    played = [r for r in rows if r["pointing_hit"] is not None and r["pred_label"] == r["true_label"]]
    summary = {
        "run_id": run_id, "scans": len(rows), "method": method,
        "mean_confidence": _mean([r["confidence"] for r in rows]),
        "mean_area_pct": _mean([r["area_pct"] for r in rows]),
        "mean_in_brain": _mean([r["in_brain"] for r in rows]),
        "deletion_drop": _mean([r["deletion_drop"] for r in rows]),
        "random_drop": _mean([r["random_drop"] for r in rows]),
        "baseline_drop": _mean([r["baseline_drop"] for r in rows]),
        "road": _mean([r["road"] for r in rows]),
        "pointing_game": _mean([r["pointing_hit"] for r in played]),
        "pointing_game_chance": _mean([r["pointing_chance"] for r in played]),
        "lesion_energy": _mean([r["lesion_energy"] for r in rows]),
    }
    assert tuple(summary) == SUMMARY_KEYS
    return summary
