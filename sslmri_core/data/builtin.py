"""The built-in synthetic data, generated on first use into a cache folder.

Two disjoint sets of synthetic subjects: a labelled set for fine-tuning and evaluation, and an
unlabelled pool for pretraining (different seed), so SSL never sees a test subject. The pool holds more
images than the labelled set (``BUILTIN_SETS``): SSL has more to learn from than the labels it is compared with.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from sslmri_core.config import BUILTIN_SETS, TASKS, SynthConfig, to_dict

if TYPE_CHECKING:
    from sslmri_core.data.synth import SynthSummary

BUILTIN_VERSION = "v2"  # v2: subject ids carry the set's seed (the pool and the labelled set never share one)


def cache_dir() -> Path:
    """``SSLMRI_CACHE`` or ``~/.cache/sslmri``."""
    return Path(os.environ.get("SSLMRI_CACHE") or Path.home() / ".cache" / "sslmri")


def builtin_root(purpose: str = "labeled") -> Path:
    """Folder holding ``<task>/<class>/...`` for every task; generated once, atomically."""
    if purpose not in BUILTIN_SETS:
        raise ValueError(f"purpose must be one of {sorted(BUILTIN_SETS)}")
    cfg = BUILTIN_SETS[purpose]
    digest = hashlib.sha256(json.dumps(to_dict(cfg), sort_keys=True).encode()).hexdigest()[:8]
    root = cache_dir() / "builtin" / f"{BUILTIN_VERSION}-{purpose}-{digest}"  # new settings, new folder
    if (root / ".complete").exists():
        return root
    from sslmri_core.progress import console

    console.print(f"Generating the built-in synthetic MRI set ({purpose}) into {root} (first use only)...")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        generate_with_progress(tmp, cfg)
        (tmp / ".complete").write_text(BUILTIN_VERSION)
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def generate_with_progress(out: Path, cfg: SynthConfig) -> SynthSummary:
    """Write a synthetic set with a progress bar over subjects."""
    from sslmri_core.data.synth import check_out, generate
    from sslmri_core.progress import make_progress

    check_out(out, cfg)  # a refusal is one line, before the progress bar
    with make_progress() as progress:
        bar = progress.add_task("synth", total=None, info="subjects", ips=0.0)
        return generate(out, cfg, lambda done, total: progress.update(bar, completed=done, total=total))


def builtin_task_root(task: str) -> Path:
    """The labelled built-in folder of one task (``ROOT/<class>/...``)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; built-in tasks: {', '.join(TASKS)}")
    return builtin_root("labeled") / task
