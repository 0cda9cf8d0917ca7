"""Writing a synthetic set (:func:`generate`): the image and mask PNGs of every subject and
each task's ``synth.json`` (config and per-subject truth)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from sslmri_core.config import TASKS, SynthConfig
from sslmri_core.errors import UsageError

from .primitives import round_json
from .render import render_slice
from .subject import Subject, make_subject
from .template import z_index

FORMAT_VERSION = 1
MIN_SIZE = 16


@dataclass
class SynthSummary:
    """What :func:`generate` wrote."""

    out: Path
    tasks: dict[str, dict[str, int]]  # task -> class -> number of image files written
    subjects: int  # total synthetic subjects written
    images: int  # total image PNGs written (masks not counted)
    seconds: float


def _tasks(task: str) -> list[str]:
    if task == "all":
        return list(TASKS)
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(TASKS)} or 'all'")
    return [task]


def _validate(config: SynthConfig) -> None:
    if config.subjects < 1 or config.slices_per_subject < 1:
        raise ValueError("subjects and slices_per_subject must be >= 1")
    if config.size < MIN_SIZE:
        raise ValueError(f"size must be >= {MIN_SIZE} px")


def _version() -> str:
    try:
        return importlib.metadata.version("sslmri")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _write_subject(subject: Subject, folder: Path, size: int) -> list[str]:
    """Render and save every slice of a subject; returns the image file names."""
    names = []
    for z in subject.slices:
        img, mask = render_slice(subject, z, size)
        stem = f"{subject.id}_slice-{z_index(z):03d}"
        Image.fromarray(img).save(folder / f"{stem}.png")
        Image.fromarray(mask).save(folder / f"{stem}_mask.png")
        names.append(f"{stem}.png")
    return names


def own_files(task_dir: Path) -> set[str] | None:
    """The files ``task_dir/synth.json`` lists (itself, every image and mask), or None when it is not ours."""
    try:
        meta = json.loads((task_dir / "synth.json").read_text())
        listed = {"synth.json"}
        for record in meta["subjects"]:
            for name in record["files"]:
                listed.add(f"{record['class']}/{name}")
                listed.add(f"{record['class']}/{Path(name).stem}_mask{Path(name).suffix}")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return listed if str(meta.get("generator", "")).startswith("sslmri_core") else None


def check_replaceable(task_dir: Path) -> None:
    """Refuse (UsageError) to replace a folder unless ``data synth`` wrote it and it holds nothing else."""
    if not task_dir.exists() and not task_dir.is_symlink():
        return
    if task_dir.is_symlink() or not task_dir.is_dir():
        raise UsageError(f"refusing to replace {task_dir}: it is not a folder `data synth` wrote; choose another OUT")
    listed = own_files(task_dir)
    if listed is None:
        raise UsageError(f"refusing to replace {task_dir}: it has no synth.json of sslmri's, so `data synth` did not "
                         "write it; choose another OUT (nothing was changed)")
    found = {p.relative_to(task_dir).as_posix() for p in task_dir.rglob("*") if not p.is_dir() or p.is_symlink()}
    foreign = sorted(found - listed)
    if foreign:
        raise UsageError(f"refusing to replace {task_dir}: it holds {len(foreign)} file(s) `data synth` did not write "
                         f"(e.g. {foreign[0]}); move them or choose another OUT (nothing was changed)")


def check_out(out: Path, config: SynthConfig) -> None:
    """Refuse (UsageError) before anything is written when a task folder under ``out`` is not ours to replace."""
    for task in _tasks(config.task):
        check_replaceable(Path(out) / task)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _swap_in(fresh: Path, task_dir: Path) -> None:
    """Put the finished ``fresh`` folder at ``task_dir``; an old set (checked ours) goes only after that."""
    old = None
    if task_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{task_dir.name}-old-", dir=task_dir.parent))
        os.replace(task_dir, old / task_dir.name)
    os.replace(fresh, task_dir)
    if old is not None:
        shutil.rmtree(old)


def generate(out: Path, config: SynthConfig,
             progress: Callable[[int, int], None] | None = None) -> SynthSummary:
    """Write the set; progress(done, total) is called after each subject.

    Each task is written to a temporary sibling folder and swapped in when complete. An existing
    ``OUT/<task>`` is replaced only when ``data synth`` wrote it (its ``synth.json``) and it holds
    no file that synth.json does not list; otherwise nothing is written and a UsageError names it.
    """
    start = time.perf_counter()
    _validate(config)
    out = Path(out)
    tasks = _tasks(config.task)
    check_out(out, config)
    total = sum(len(TASKS[t]) for t in tasks) * config.subjects
    counts: dict[str, dict[str, int]] = {}
    done = images = 0
    out.mkdir(parents=True, exist_ok=True)
    for task in tasks:
        fresh = Path(tempfile.mkdtemp(prefix=f".{task}-new-", dir=out))
        fresh.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the set is an ordinary folder
        try:
            done, images = _write_task(fresh, task, config, counts, done, images, total, progress)
            _swap_in(fresh, out / task)
        finally:
            if fresh.exists():
                shutil.rmtree(fresh, ignore_errors=True)
    return SynthSummary(out=out, tasks=counts, subjects=done, images=images,
                        seconds=time.perf_counter() - start)


def _write_task(task_dir: Path, task: str, config: SynthConfig, counts: dict[str, dict[str, int]], done: int,
                images: int, total: int, progress: Callable[[int, int], None] | None) -> tuple[int, int]:
    """Render every subject of ``task`` into ``task_dir``; returns the running (subjects, images) counts."""
    label = re.sub(r"[^A-Za-z0-9]", "", task)
    records = []
    counts[task] = {}
    for ci, cls in enumerate(TASKS[task]):
        folder = task_dir / cls
        folder.mkdir(parents=True)
        counts[task][cls] = 0
        for i in range(config.subjects):
            # what makes a subject (seed, class, index) is in its id: two sets never share an id by accident
            sid = f"sub-{label}s{config.seed}c{ci}n{i + 1:04d}"
            subject = make_subject(task, cls, i, sid, config)
            files = _write_subject(subject, folder, config.size)
            counts[task][cls] += len(files)
            images += len(files)
            records.append(_record(subject, ci, files))
            done += 1
            if progress is not None:
                progress(done, total)
    _write_meta(task_dir, task, config, records)
    return done, images


def _record(subject: Subject, label: int, files: list[str]) -> dict[str, Any]:
    return {
        "subject": subject.id,
        "class": subject.cls,
        "label": label,
        "slices": [z_index(z) for z in subject.slices],
        "slices_mni_z_mm": subject.slices,
        "files": files,
        "lesion": subject.lesion.info(),
        "deformation": {k: round_json(v) for k, v in subject.deformation.items()},
    }


def _write_meta(task_dir: Path, task: str, config: SynthConfig,
                records: list[dict[str, Any]]) -> None:
    meta = {
        "generator": "sslmri_core.data.synth",
        "sslmri_version": _version(),
        "format_version": FORMAT_VERSION,
        "task": task,
        "classes": TASKS[task],
        "config": asdict(config),
        "template": "MNI152 ICBM 2009a sym, 1 mm (nilearn)",
        "orientation": "axial; anterior up; patient right on image left (radiological)",
        "contrast": "T1-weighted; tumours post-contrast-like; MS lesions hypointense",
        "subjects": records,
    }
    (task_dir / "synth.json").write_text(json.dumps(meta, indent=1) + "\n")
