"""Shared fixtures: a tiny generated MRI set, run stores on SQLite and PostgreSQL, and no writes
outside pytest's temporary folders."""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sslmri_core.config import SynthConfig

ROOT = Path(__file__).resolve().parents[1]
# A PostgreSQL URL whose role may CREATE DATABASE; .ci/run starts a server and sets it.
PG_ENV = "SSLMRI_TEST_PG_URL"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The built-in data cache and the default run store live in pytest's temp folder, never in
    ~/.cache or the working directory (a test that forgets --db cannot touch a shared store)."""
    base = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("SSLMRI_CACHE", str(base / "cache"))
    monkeypatch.setenv("SSLMRI_DB", f"sqlite:///{base / 'default-runs.db'}")


@pytest.fixture(autouse=True)
def _restore_main() -> Iterator[None]:
    """Streamlit's AppTest runs a page as ``__main__`` and leaves it there; processes spawned by a later
    test (torch's ``mp.spawn``, multiprocessing) would then run that page again."""
    main = sys.modules.get("__main__")
    yield
    if main is not None:
        sys.modules["__main__"] = main


@pytest.fixture(scope="session", autouse=True)
def _dashboard_roots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The dashboard opens scans and run files only under the operator's roots: in tests, pytest's
    temporary folder (session-wide, so dashboard servers started by module fixtures see it too)."""
    names = ("SSLMRI_DATA_ROOTS", "SSLMRI_RUNS_ROOTS")
    before = {name: os.environ.get(name) for name in names}
    for name in names:
        os.environ[name] = str(tmp_path_factory.getbasetemp().resolve())
    yield
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def synth_tumor(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built-in tumour set, tiny: 4 classes x 5 subjects x 2 slices at 64 px."""
    from sslmri_core.data.synth import generate

    out = tmp_path_factory.mktemp("synth")
    generate(out, SynthConfig(task="tumor", subjects=5, slices_per_subject=2, size=64, seed=0))
    return out / "tumor"


@pytest.fixture(scope="session")
def synth_lonely_class(synth_tumor: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``synth_tumor`` with ``notumor`` cut down to one subject: under subject folds, the fold that tests
    that subject trains without the class."""
    data = tmp_path_factory.mktemp("lonely") / "tumor"
    shutil.copytree(synth_tumor, data)
    keep = sorted(p.name for p in (data / "notumor").iterdir())[0].split("_")[0]  # sub-<id>
    for path in (data / "notumor").iterdir():
        if path.name.split("_")[0] != keep:
            path.unlink()
    return data


def postgres_base_url() -> str:
    """The PostgreSQL server the tests may use: skipped locally without one, a failure in CI."""
    url = os.environ.get(PG_ENV)
    if not url:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"${PG_ENV} is not set: in CI the store tests must run on PostgreSQL too (.ci/run sets it)")
        pytest.skip(f"${PG_ENV} is not set (PostgreSQL store tests run in CI, or export it to run them here)")
    return url


def fresh_postgres_database(base_url: str) -> Iterator[str]:
    """A new, uniquely named database on the server of ``base_url``, dropped afterwards."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    name = f"sslmri_test_{os.getpid()}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(base_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:  # FORCE: engines the test left open are disconnected
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty run store URL: a SQLite file, then a fresh PostgreSQL database (see PG_ENV)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'runs.db'}"
    else:
        yield from fresh_postgres_database(postgres_base_url())
