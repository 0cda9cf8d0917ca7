"""Shared fixtures: a tiny generated MRI set, and no writes outside pytest's temporary folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sslmri_core.config import SynthConfig

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("SSLMRI_DB", "sqlite:///" + str(Path(os.environ.get("TMPDIR", "/tmp")) / "sslmri-test-never-used.db"))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The built-in data cache lives in pytest's temp folder, never in ~/.cache."""
    monkeypatch.setenv("SSLMRI_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def synth_tumor(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built-in tumour set, tiny: 4 classes x 5 subjects x 2 slices at 64 px."""
    from sslmri_core.synth import generate

    out = tmp_path_factory.mktemp("synth")
    generate(out, SynthConfig(task="tumor", subjects=5, slices_per_subject=2, size=64, seed=0))
    return out / "tumor"
