"""The built-in data: generated once on first use, disjoint subjects for pretraining and labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import sslmri_core.data.builtin as builtin
from sslmri_core.data.audit.near import pixel_correlation, thumbnails
from sslmri_core.config import TASKS, SynthConfig
from sslmri_core.data.sources import SUBJECT_PATTERNS, discover, parse_subject
from sslmri_core.data.synth import generate
from sslmri_core.data.synth import subject as synth_subject

TINY = {
    "labeled": SynthConfig(task="all", subjects=3, slices_per_subject=1, size=48, seed=0),
    "pretrain": SynthConfig(task="all", subjects=1, slices_per_subject=1, size=48, seed=1000),
}
NEAR_COPY = 0.96  # the audit's near-duplicate rule: pixel correlation of 64 px thumbnails


@pytest.fixture()
def tiny_builtin(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setattr(builtin, "BUILTIN_SETS", TINY)
    monkeypatch.setenv("SSLMRI_CACHE", str(tmp_path))
    return tmp_path


def test_generated_once_then_reused(tiny_builtin: Path) -> None:
    first = builtin.builtin_root("labeled")
    stamp = (first / ".complete").stat().st_mtime_ns
    assert builtin.builtin_root("labeled") == first
    assert (first / ".complete").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in first.iterdir() if p.is_dir()) == ["alzheimer", "ms", "parkinsons", "tumor"]


def _subjects(root: Path) -> dict[tuple[str, str], dict]:
    """Every synthetic subject of a built-in set, by (task, subject id), from the generator's own record."""
    out = {}
    for task in TASKS:
        meta = json.loads((root / task / "synth.json").read_text())
        for record in meta["subjects"]:
            out[(task, record["subject"])] = {**record, "seed": meta["config"]["seed"]}
    return out


def _generator_identity(task: str, subjects: list[dict]) -> set[tuple[int, ...]]:
    """The random streams the generator drew the subjects from: one subject, one seed sequence."""
    out = set()
    for record in subjects:
        index = [r["subject"] for r in subjects if r["class"] == record["class"]].index(record["subject"])
        out.add(tuple(synth_subject._seed(record["seed"], task, record["class"], index)))
    return out


def _images(root: Path, side: int = 48) -> np.ndarray:
    """Every image of a set, brought to ``side`` px (a set rendered at another size stays comparable)."""
    paths = sorted(p for p in root.rglob("*.png") if not p.name.endswith("_mask.png"))
    return np.stack([np.asarray(Image.open(p).convert("L").resize((side, side), Image.BILINEAR)) for p in paths])


def _max_correlation(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """For each image of ``first``, its highest pixel correlation (the audit's near-copy measure) with ``second``."""
    both = thumbnails(np.concatenate([first, second]))
    a, b = np.meshgrid(np.arange(len(first)), len(first) + np.arange(len(second)), indexing="ij")
    return pixel_correlation(both, a.ravel(), b.ravel()).reshape(len(first), len(second)).max(axis=1)


def test_pretraining_pool_subject_ids_are_not_labelled_subject_ids(tiny_builtin: Path) -> None:
    """A subject id names one subject: an id found in both sets reads as a test subject in the SSL pool."""
    labeled = {sid for _, sid in _subjects(builtin.builtin_root("labeled"))}
    pool = {sid for _, sid in _subjects(builtin.builtin_root("pretrain"))}
    assert labeled and pool
    assert not labeled & pool, sorted(labeled & pool)
    # ... and the ids a data folder is split by (parsed from the file names) agree
    labeled_files = {parse_subject(Path(f.path).name, SUBJECT_PATTERNS["bids"])
                     for f in discover(builtin.builtin_root("labeled")).files}
    pool_files = {parse_subject(Path(f.path).name, SUBJECT_PATTERNS["bids"])
                  for f in discover(builtin.builtin_root("pretrain")).files}
    assert None not in labeled_files | pool_files and not labeled_files & pool_files


def test_pretraining_pool_subjects_are_other_generator_subjects(tiny_builtin: Path) -> None:
    """Disjoint by construction: no pool subject is drawn from the random stream of a labelled subject."""
    labeled, pool = _subjects(builtin.builtin_root("labeled")), _subjects(builtin.builtin_root("pretrain"))
    for task in TASKS:
        ours = _generator_identity(task, [r for (t, _), r in labeled.items() if t == task])
        theirs = _generator_identity(task, [r for (t, _), r in pool.items() if t == task])
        assert len(ours) == TINY["labeled"].subjects * len(TASKS[task])  # one stream per subject
        assert len(theirs) == TINY["pretrain"].subjects * len(TASKS[task])
        assert not ours & theirs, task


def test_no_pretraining_image_is_a_near_copy_of_a_labelled_one(tiny_builtin: Path, tmp_path: Path) -> None:
    """Not merely other bytes: no pool image looks like a labelled image (same subject re-noised, re-sized)."""
    labeled, pool = _images(builtin.builtin_root("labeled")), _images(builtin.builtin_root("pretrain"))
    assert len(pool) == sum(len(c) for c in TASKS.values()) and len(labeled) == 3 * len(pool)
    assert _max_correlation(pool, labeled).max() < NEAR_COPY, "a pool image is a near copy of a labelled one"
    # The measure does see the same subjects when they come back with other noise at another size:
    # the labelled set's first subjects rendered at 64 px (noise drawn anew), shrunk to the set's 48 px.
    generate(tmp_path / "again", SynthConfig(task="all", subjects=1, slices_per_subject=1, size=64,
                                             seed=TINY["labeled"].seed))
    assert _max_correlation(_images(tmp_path / "again"), labeled).min() >= NEAR_COPY


def test_finetune_without_data_uses_the_builtin_task(tiny_builtin: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cli import app

    result = CliRunner().invoke(app, ["finetune", "--init", "scratch", "--task", "ms", "--model", "test_resnet",
                                      "--image-size", "48", "--epochs", "1", "--no-progress",
                                      "--db", f"sqlite:///{tmp_path / 'r.db'}", "--out", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.stderr
    from sqlalchemy import select

    from sslmri_core.store.schema import Param
    from sslmri_core.store.writer import RunStore

    with RunStore(f"sqlite:///{tmp_path / 'r.db'}").engine.connect() as conn:
        root = conn.execute(select(Param.value).where(Param.key == "data_root")).scalar_one()
    assert root == str(builtin.builtin_task_root("ms"))


def test_unknown_builtin_task(tiny_builtin: Path) -> None:
    with pytest.raises(ValueError, match="unknown task"):
        builtin.builtin_task_root("cardiology")
