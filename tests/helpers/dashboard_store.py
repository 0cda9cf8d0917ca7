"""A run store that fills every dashboard page, built through the real RunStore API.

Real files where the pages read files: scan PNGs under a data folder, Grad-CAM heat maps under a
gradcam run's folder, and a tiny ``test_resnet`` fine-tuning checkpoint (so on-demand Grad-CAM
and the upload prediction run a real model). No training: seconds to build.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sqlalchemy.orm import Session

from sslmri_core.store.writer import RunStore

LABELS = ["glioma", "meningioma", "notumor", "pituitary"]
MATRIX = [[5, 1, 0, 0], [0, 4, 2, 0], [0, 0, 6, 0], [1, 0, 0, 5]]


def _pretrain_config() -> dict:
    return {"data": [], "model": "resnet18", "image_size": 96, "batch_size": 32, "epochs": 2,
            "max_steps": None, "lr": 0.001, "temperature": 0.2, "seed": 0}


def finetune_config(init: str, mode: str, from_run: int | None, fraction: float = 1.0) -> dict:
    return {"task": "tumor", "data": None, "from_run": from_run, "init": init, "model": "resnet18",
            "image_size": 96, "mode": mode, "label_fraction": fraction, "epochs": 3, "seed": 0}


def _log_finetune(store: RunStore, run_id: int, accuracy: float, f1: float) -> None:
    store.log_params(run_id, {"split_level": "subject", "n_train": 42, "n_val": 9, "n_test": 24,
                              "classes": '["glioma", "meningioma", "notumor", "pituitary"]'})
    for epoch in range(3):
        store.log_metrics(run_id, {"train_loss": 1.2 - 0.3 * epoch, "val_accuracy": 0.5 + 0.1 * epoch,
                                   "val_balanced_accuracy": 0.45 + 0.1 * epoch, "val_macro_f1": 0.4 + 0.1 * epoch},
                          epoch=epoch)
    store.log_metrics(run_id, {"test_accuracy": accuracy, "test_balanced_accuracy": accuracy - 0.02,
                               "test_macro_precision": f1 + 0.01, "test_macro_recall": f1 - 0.01,
                               "test_macro_f1": f1, "val_accuracy": 0.7, "best_epoch": 2, "test_ece": math.nan})
    store.log_confusion(run_id, "test", "slice", LABELS, MATRIX)
    store.log_confusion(run_id, "val", "slice", LABELS, [[2, 0, 0, 0], [0, 2, 0, 0], [0, 1, 1, 0], [0, 0, 0, 3]])
    store.log_predictions(run_id, [
        {"split": "test", "scan": f"/data/tumor/{label}/s{i}.png", "subject": f"S{i}", "true_label": label,
         "pred_label": LABELS[(j + i) % 4], "confidence": 0.5 + 0.1 * i, "probs": [0.25, 0.25, 0.25, 0.25]}
        for j, label in enumerate(LABELS) for i in range(2)
    ])


def populate_store(url: str) -> dict[str, int]:
    """A pretrain run, finetune runs from scratch and from SSL (an older and a newer), a failed run."""
    store = RunStore(url)
    ids: dict[str, int] = {}
    ids["pretrain"] = store.start_run("pretrain", _pretrain_config(), device="cpu")
    for step in range(10):
        loss = math.nan if step == 3 else 5.0 - 0.3 * step
        store.log_metrics(ids["pretrain"], {"loss": loss, "lr": 1e-3 * (step + 1) / 10, "images_per_s": 30.0 + step},
                          step=step, epoch=step // 5)
    store.log_metrics(ids["pretrain"], {"epoch_loss": 4.4}, epoch=0)
    store.log_metrics(ids["pretrain"], {"epoch_loss": 3.1}, epoch=1)
    store.update_run(ids["pretrain"], checkpoint_path="/runs/1/encoder.pt")
    store.end_run(ids["pretrain"])

    for name, init, mode, parent, acc, f1 in [
        ("scratch", "scratch", "full", None, 0.812, 0.804),
        ("ssl_old", "ssl", "linear", ids["pretrain"], 0.700, 0.690),
    ]:
        ids[name] = store.start_run("finetune", finetune_config(init, mode, parent), task="tumor",
                                    parent_run_id=parent, device="cpu")
        _log_finetune(store, ids[name], acc, f1)
        store.end_run(ids[name])

    ids["failed"] = store.start_run("finetune", {**finetune_config("ssl", "full", 1), "task": "alzheimer"},
                                    task="alzheimer", parent_run_id=ids["pretrain"])
    with pytest.raises(RuntimeError), store.track(ids["failed"]):
        raise RuntimeError("boom: out of memory")

    ids["ssl_new"] = store.start_run("finetune", finetune_config("ssl", "linear", ids["pretrain"]), task="tumor",
                                     parent_run_id=ids["pretrain"], device="cpu")
    _log_finetune(store, ids["ssl_new"], 0.853, 0.847)
    store.end_run(ids["ssl_new"])
    store.engine.dispose()
    return ids


ARMS = ("ssl-linear", "ssl-full", "scratch")
FRACTIONS = (0.1, 0.5, 1.0)
SEEDS = (0, 1, 2)
IMAGE_SIZE = 64
SUBJECTS_PER_CLASS = 2
SLICES = 3


TEST_SUBJECTS_PER_CLASS = 10  # in an experiment child's test predictions (10: no few-subject fallback)


def _arm_score(arm: str, fraction: float, seed: int) -> float:
    base = {"ssl-linear": 0.55, "ssl-full": 0.62, "scratch": 0.45, "imagenet": 0.5}[arm]
    return round(base + 0.25 * math.log10(fraction * 10) / 1.0 * 0.5 + 0.01 * seed, 4)


def child_predictions(score: float, per_class: int = TEST_SUBJECTS_PER_CLASS, scan_root: str = "/data") -> list[dict]:
    """Test predictions of one child: two slices per subject; in each class the first ``round(score * n)``
    subjects are right (so slice and subject balanced accuracy are that fraction), the rest wrong."""
    rows = []
    right = round(score * per_class)
    for c, label in enumerate(LABELS):
        for s in range(per_class):
            pred = c if s < right else (c + 1) % len(LABELS)
            probs = [0.1] * len(LABELS)
            probs[pred] = 0.7
            for k in range(2):
                rows.append({"split": "test", "scan": f"{scan_root}/{label}/sub-{c}{s:02d}_slice-{k}.png",
                             "subject": f"sub-{c}{s:02d}", "true_label": label, "pred_label": LABELS[pred],
                             "confidence": 0.7, "probs": probs})
    return rows


def add_experiment(store: Any, task: str = "tumor", score: Callable[[str, float, int], float] = _arm_score,
                   arms: tuple[str, ...] = ARMS, fractions: tuple[float, ...] = FRACTIONS,
                   seeds: tuple[int, ...] = SEEDS, leaky_arms: tuple[str, ...] = ()) -> int:
    """An experiment run with a child per arm x fraction x seed: params (arm, fraction, seed, classes,
    optimizer_steps, leakage_reasons), metrics and test predictions scoring ``score(arm, fraction, seed)``."""
    exp = store.start_run("experiment", {"task": task, "fractions": list(fractions), "seeds": len(seeds),
                                         "bootstrap": 200}, task=task)
    for arm in arms:
        for fraction in fractions:
            for seed in seeds:
                init, mode = ("ssl", arm.split("-")[1]) if arm.startswith("ssl-") else (arm, "full")
                run = store.start_run("finetune", {"task": task, "init": init, "mode": mode, "label_fraction": fraction,
                                                   "seed": seed, "model": "test_resnet", "fold": None},
                                      task=task, parent_run_id=exp)
                reasons = ["SSL pool holds 3 test groups"] if arm in leaky_arms else []
                store.log_params(run, {"arm": arm, "fraction": fraction, "seed": seed, "split_level": "subject",
                                       "ssl_pool_test_overlap": 0, "classes": json.dumps(LABELS),
                                       "optimizer_steps": int(300 / fraction) if fraction < 0.5 else 600,
                                       "leakage_reasons": json.dumps(reasons)})
                value = score(arm, fraction, seed)
                store.log_metrics(run, {"test_balanced_accuracy": value, "test_accuracy": value,
                                        "test_macro_f1": value - 0.01, "test_subject_balanced_accuracy": value,
                                        "test_subject_accuracy": value, "test_subject_macro_f1": value - 0.01})
                store.log_predictions(run, child_predictions(value))
                store.log_confusion(run, "test", "subject", LABELS, [[2, 0, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 2]])
                store.end_run(run)
    store.end_run(exp)
    return exp


def write_scans(root: Path) -> list[dict[str, Any]]:
    """PNG slices ``root/<class>/sub-XX_slice-Y.png`` with a bright blob whose place depends on the class."""
    rows = []
    rng = np.random.default_rng(0)
    for c, label in enumerate(LABELS):
        for s in range(SUBJECTS_PER_CLASS):
            subject = f"sub-{c}{s}"
            for k in range(SLICES):
                img = (rng.random((IMAGE_SIZE, IMAGE_SIZE)) * 60).astype(np.uint8)
                y, x = 12 + 10 * c, 16 + 8 * k
                img[y : y + 12, x : x + 12] = 220
                path = root / label / f"{subject}_slice-{k + 1}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(path)
                rows.append({"path": str(path), "label": label, "subject": subject, "slice": k})
    return rows


def write_checkpoint(out_dir: Path, classes: list[str]) -> Path:
    """A real fine-tuning checkpoint of a random ``test_resnet`` classifier (what finetune saves)."""
    from sslmri_core.config import FinetuneConfig, to_dict, with_overrides
    from sslmri_core.train.checkpoints import atomic_save
    from sslmri_core.train.models import Classifier, create_encoder

    cfg = with_overrides(FinetuneConfig(), model="test_resnet", image_size=IMAGE_SIZE, init="scratch")
    model = Classifier(create_encoder("test_resnet"), len(classes))
    path = out_dir / "checkpoint.pt"
    atomic_save({"kind": "finetune", "run_id": 0, "config": to_dict(cfg), "classes": classes, "best_epoch": 0,
                 "model": model.state_dict()}, path)
    return path


SLICE_POSITIONS = {0: 20.0, 1: -5.0, 2: 42.5}  # slice-1, -2, -3 of every subject: along the axis -2, -1, -3
NIFTI_SUBJECT = "sub-90"
NIFTI_SLICES = (1, 2, 3)


def write_nifti(path: Path) -> None:
    """A small NIfTI volume ``(64, 64, 5)`` whose axial slices 1-3 hold a bright square (0 and 4 are empty)."""
    import nibabel as nib

    vol = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 5), np.float32)
    for z in NIFTI_SLICES:
        vol[8:56, 8:56, z] = 40.0 + 10 * z
        vol[20 + 4 * z : 34 + 4 * z, 24:38, z] = 200.0
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(path))


def save_scan_dataset(store: Any, data: Path, scans: list[dict[str, Any]], nifti: Path) -> int:
    """The scans' data set through ``RunStore.save_manifest``: every PNG with a stored ``position`` out of its
    name's order (:data:`SLICE_POSITIONS`), the NIfTI slices with their index as position."""
    from sslmri_core.data.manifest import Manifest, ManifestRow

    def row(path: str, label: str, subject: str, z: int | None, position: float) -> ManifestRow:
        return ManifestRow(path=path, rel_path=str(Path(path).relative_to(data)), label=label, folder_label=label,
                           subject=subject, given_split=None,
                           content_hash=hashlib.sha256(f"{path}#{z}".encode()).hexdigest()[:16],
                           file_size=1, width=IMAGE_SIZE, height=IMAGE_SIZE, mode="L", bit_depth=8, slice_index=z,
                           position=position)

    rows = [row(r["path"], r["label"], r["subject"], None, SLICE_POSITIONS[r["slice"]]) for r in scans]
    rows += [row(str(nifti), LABELS[0], NIFTI_SUBJECT, z, float(z)) for z in NIFTI_SLICES]
    return int(store.save_manifest(Manifest(str(data), rows, "sub-XX")))


def add_scan_models(store: Any, root: Path) -> dict[str, int]:
    """Two fine-tuning runs (SSL and scratch) with predictions for real scan files (and, for the first, three
    slices of a NIfTI volume), a gradcam run with stored heat maps for the first, and an embedding for each;
    both runs name the data set whose manifest rows give the slices' positions."""
    data = root / "data" / "tumor"
    scans = write_scans(data)
    nifti = data / LABELS[0] / f"{NIFTI_SUBJECT}_t1.nii.gz"
    write_nifti(nifti)
    dataset = save_scan_dataset(store, data, scans, nifti)
    ids: dict[str, int] = {"scan_dataset": dataset}
    rng = np.random.default_rng(1)
    for name, init, mode in (("scan_ssl", "ssl", "full"), ("scan_scratch", "scratch", "full")):
        run = store.start_run("finetune", {"task": "tumor", "init": init, "mode": mode, "label_fraction": 1.0, "seed": 0,
                                           "model": "test_resnet", "image_size": IMAGE_SIZE, "data": str(data)},
                              task="tumor")
        out_dir = root / "runs" / f"run-{run}"
        checkpoint = write_checkpoint(out_dir, LABELS)
        store.update_run(run, out_dir=str(out_dir), checkpoint_path=str(checkpoint))
        store.log_params(run, {"data_root": str(data), "classes": json.dumps(LABELS), "split_level": "subject",
                               "dataset": dataset})
        preds = []
        for row in scans:
            probs = rng.dirichlet(np.ones(len(LABELS)) * 0.7)
            pred = int(probs.argmax())
            preds.append({"split": "test", "scan": row["path"], "subject": row["subject"], "true_label": row["label"],
                          "pred_label": LABELS[pred], "confidence": float(probs[pred]),
                          "probs": [round(float(p), 6) for p in probs]})
        if name == "scan_ssl":
            for z in NIFTI_SLICES:
                probs = [0.1, 0.2, 0.3, 0.4] if z == 2 else [0.7, 0.1, 0.1, 0.1]
                preds.append({"split": "test", "scan": f"{nifti}#z={z}", "subject": NIFTI_SUBJECT,
                              "true_label": LABELS[0], "pred_label": LABELS[int(np.argmax(probs))],
                              "confidence": max(probs), "probs": probs})
        store.log_predictions(run, preds)
        store.log_confusion(run, "test", "slice", LABELS, [[4, 1, 1, 0], [0, 5, 1, 0], [1, 0, 5, 0], [0, 1, 0, 5]])
        store.log_metrics(run, {"test_balanced_accuracy": 0.8, "test_accuracy": 0.8, "test_macro_f1": 0.79})
        store.log_embeddings(run, "umap", [
            {"scan": r["path"], "subject": r["subject"], "label": r["label"], "split": "test", "source": r["label"],
             "x": float(LABELS.index(r["label"]) + rng.normal(0, 0.2)), "y": float(r["slice"] + rng.normal(0, 0.2))}
            for r in scans])
        store.end_run(run)
        ids[name] = run

    cam_run = store.start_run("gradcam", {"run": ids["scan_ssl"], "method": "gradcam"}, task="tumor",
                              parent_run_id=ids["scan_ssl"])
    cam_dir = root / "runs" / f"run-{cam_run}"
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE]
    cam_rows = []
    for i, row in enumerate(scans):
        heat = np.exp(-(((yy - 18 - 10 * LABELS.index(row["label"])) ** 2) + (xx - 22 - 8 * row["slice"]) ** 2) / 120.0)
        rel = f"heatmaps/{i:04d}.png"
        (cam_dir / "heatmaps").mkdir(parents=True, exist_ok=True)
        Image.fromarray((heat * 255).astype(np.uint8)).save(cam_dir / rel)
        cam_rows.append({"model_run_id": ids["scan_ssl"], "checkpoint": None, "method": "gradcam", "split": "test",
                         "scan": row["path"], "subject": row["subject"], "true_label": row["label"],
                         "target_label": row["label"], "pred_label": row["label"], "confidence": 0.7,
                         "intensity": 0.21, "area_pct": 12.5, "threshold": 0.5, "in_brain": 0.93, "raw_max": 3.2,
                         "raw_mean": 0.4, "deletion_drop": 0.3, "random_drop": 0.05, "road": None,
                         "pointing_hit": True, "lesion_energy": 0.6, "heatmap_path": rel, "baseline_drop": 0.12,
                         "pointing_chance": 0.08, "head_area": 0.42, "lesion_area": 0.03})
    store.update_run(cam_run, out_dir=str(cam_dir))
    store.log_cam_stats(cam_run, cam_rows)
    store.end_run(cam_run)
    ids["gradcam"] = cam_run
    ids["n_scans"] = len(scans)
    return ids


def add_audited_dataset(store: Any, root: Path) -> int:
    """A data set row with two unusable files and an audit that found a cross-split duplicate."""
    from sslmri_core.store.schema import Dataset, ManifestEntry

    data = root / "data" / "tumor"
    first = sorted((data / LABELS[0]).glob("*.png"))[:2]
    with Session(store.engine) as session, session.begin():
        ds = Dataset(fingerprint=f"{root.name:f<64}"[:64], root=str(data), created_at=datetime.now(timezone.utc), n_files=26,
                     n_usable=24, n_images=24, classes={lab: 6 for lab in LABELS}, subject_pattern="sub-XX",
                     split_level="subject",
                     summary={"files": 26, "usable": 24, "images": 24, "unusable": [
                         {"path": str(data / "glioma" / "broken.png"), "reason": "truncated: image file is truncated"},
                         {"path": str(data / "notes.txt"), "reason": "not an image file type"}]})
        session.add(ds)
        session.flush()
        dataset_id = int(ds.id)
        for path, reason in ((data / "glioma" / "broken.png", "truncated: image file is truncated"),
                             (data / "notes.txt", "not an image file type")):
            session.add(ManifestEntry(dataset_id=dataset_id, key=str(path), path=str(path), rel_path=path.name,
                                      label="glioma", folder_label="glioma", status="unusable", reason=reason))
        for path in first:
            session.add(ManifestEntry(dataset_id=dataset_id, key=str(path), path=str(path), rel_path=path.name,
                                      label="glioma", folder_label="glioma", subject="sub-00", status="ok"))
    group = {"hash": "ab" * 8, "size": 2, "keys": [str(p) for p in first], "labels": ["glioma", "glioma"],
             "splits": ["train", "test"], "subjects": ["sub-00", "sub-00"], "cross_class": False,
             "cross_split": True, "cross_subject": False}
    summary = {"files": 26, "images": 24, "unusable": 2, "duplicate_groups": 1, "duplicate_images": 2,
               "redundant_images": 1, "cross_class_duplicates": 0, "cross_split_duplicates": 1,
               "cross_subject_duplicates": 0, "near_duplicate_groups": 0, "cross_class_near_duplicates": 0,
               "cross_split_near_duplicates": 0, "subject_leaks": 1, "subjects_spanning_classes": 0,
               "confound": {"flag": False, "intensity_flag": False, "metadata_accuracy": 0.25, "majority_rate": 0.25,
                            "reason": "image size, mode and bit depth are the same for every image: no metadata confound"},
               "class_balance": {"counts": {lab: 6 for lab in LABELS}},
               "slices_per_subject": {"min": 3, "median": 3, "max": 3, "mean": 3.0,
                                      "subjects_per_class": {lab: 2 for lab in LABELS}}}
    details = {**summary, "details": {"duplicate_groups": [group], "near_duplicate_groups": [],
                                      "subject_leaks": [{"subject": "sub-00", "splits": ["train", "test"], "images": 3}],
                                      "cut": {}}}
    store.save_audit(dataset_id, summary, details)
    return dataset_id


def populate_full_store(root: Path, url: str | None = None) -> tuple[str, dict[str, int]]:
    """Everything the seven pages show (files under ``root``; the store at ``url``, default a SQLite file there)."""
    from sslmri_core.store.writer import RunStore

    root.mkdir(parents=True, exist_ok=True)
    url = url or f"sqlite:///{root / 'runs.db'}"
    ids = populate_store(url)
    store = RunStore(url)
    ids["experiment"] = add_experiment(store)
    ids.update(add_scan_models(store, root))
    ids["dataset"] = add_audited_dataset(store, root)
    store.engine.dispose()
    return url, ids
