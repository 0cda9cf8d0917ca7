"""The built-in data: generated once on first use, disjoint subjects for pretraining and labels."""

from __future__ import annotations

from pathlib import Path

import pytest

import sslmri_core.builtin as builtin
from sslmri_core.config import SynthConfig
from sslmri_core.sources import discover

TINY = {
    "labeled": SynthConfig(task="all", subjects=3, slices_per_subject=1, size=48, seed=0),
    "pretrain": SynthConfig(task="all", subjects=1, slices_per_subject=1, size=48, seed=1000),
}


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


def test_pretraining_pool_shares_no_image_with_the_labelled_set(tiny_builtin: Path) -> None:
    labeled = discover(builtin.builtin_root("labeled")).files
    pool = discover(builtin.builtin_root("pretrain")).files
    hashes = lambda items: {Path(it.path).read_bytes() for it in items}  # noqa: E731
    assert labeled and pool and not (hashes(labeled) & hashes(pool))


def test_finetune_without_data_uses_the_builtin_task(tiny_builtin: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cli import app

    result = CliRunner().invoke(app, ["finetune", "--init", "scratch", "--task", "ms", "--model", "test_resnet",
                                      "--image-size", "48", "--epochs", "1", "--no-progress",
                                      "--db", f"sqlite:///{tmp_path / 'r.db'}", "--out", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.stderr
    from sqlalchemy import select

    from sslmri_core.store import Param, RunStore

    with RunStore(f"sqlite:///{tmp_path / 'r.db'}").engine.connect() as conn:
        root = conn.execute(select(Param.value).where(Param.key == "data_root")).scalar_one()
    assert root == str(builtin.builtin_task_root("ms"))


def test_unknown_builtin_task(tiny_builtin: Path) -> None:
    with pytest.raises(ValueError, match="unknown task"):
        builtin.builtin_task_root("cardiology")
