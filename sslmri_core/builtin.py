"""The built-in synthetic data, generated on first use into a cache folder.

Two disjoint sets of synthetic subjects: a labelled set for fine-tuning and evaluation, and an
unlabelled pool for pretraining (different seed), so SSL never sees a test subject.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from sslmri_core.config import TASKS, SynthConfig

BUILTIN_VERSION = "v1"
SEEDS = {"labeled": 0, "pretrain": 1000}


def cache_dir() -> Path:
    """``SSLMRI_CACHE`` or ``~/.cache/sslmri``."""
    return Path(os.environ.get("SSLMRI_CACHE") or Path.home() / ".cache" / "sslmri")


def builtin_root(purpose: str = "labeled") -> Path:
    """Folder holding ``<task>/<class>/...`` for every task; generated once, atomically."""
    if purpose not in SEEDS:
        raise ValueError(f"purpose must be one of {sorted(SEEDS)}")
    root = cache_dir() / "builtin" / f"{BUILTIN_VERSION}-{purpose}"
    if (root / ".complete").exists():
        return root
    from sslmri_core.progress import console
    from sslmri_core.synth import generate

    console.print(f"Generating the built-in synthetic MRI set ({purpose}) into {root} (first use only)...")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        generate(tmp, SynthConfig(task="all", seed=SEEDS[purpose]))
        (tmp / ".complete").write_text(BUILTIN_VERSION)
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def builtin_task_root(task: str) -> Path:
    """The labelled built-in folder of one task (``ROOT/<class>/...``)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; built-in tasks: {', '.join(TASKS)}")
    return builtin_root("labeled") / task
