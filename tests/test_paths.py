"""Paths read from the store are opened only inside the folders they may come from."""

from __future__ import annotations

from pathlib import Path

import pytest

from sslmri_core.data.sources import discover
from sslmri_core.errors import UsageError
from sslmri_core.paths import UnsafePathError, data_roots, inside_roots, run_file, scan_file, viewable_run_file


def test_paths_from_the_store_stay_inside_their_run_folder(tmp_path: Path) -> None:
    out = tmp_path / "runs" / "run-1"
    (out / "checkpoint.pt").parent.mkdir(parents=True)
    (out / "checkpoint.pt").write_bytes(b"x")
    assert run_file(out / "checkpoint.pt", str(out)) == (out / "checkpoint.pt").resolve()
    for escape in (out / ".." / "run-2" / "checkpoint.pt", Path("/etc/passwd"), tmp_path / "elsewhere.pt"):
        with pytest.raises(UnsafePathError, match="outside the allowed folders"):
            run_file(escape, str(out))
    (out / "link.pt").symlink_to(tmp_path / "elsewhere.pt")  # a link inside that points out
    with pytest.raises(UnsafePathError, match="outside"):
        run_file(out / "link.pt", str(out))
    with pytest.raises(UnsafePathError, match="no output folder"):
        run_file(out / "checkpoint.pt", None)
    assert inside_roots(tmp_path / "data" / "a.png", [tmp_path / "other", tmp_path / "data"]).name == "a.png"


@pytest.fixture()
def roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """An operator's data root and runs root (absolute), each with one real file."""
    data, runs = tmp_path / "data", tmp_path / "runs"
    (data / "glioma").mkdir(parents=True)
    (data / "glioma" / "x.png").write_bytes(b"x")
    (runs / "run-3" / "cams").mkdir(parents=True)
    (runs / "run-3" / "cams" / "0.png").write_bytes(b"x")
    monkeypatch.setenv("SSLMRI_DATA_ROOTS", str(data))
    monkeypatch.setenv("SSLMRI_RUNS_ROOTS", str(runs))
    monkeypatch.delenv("SSLMRI_ALLOW_BROAD_ROOTS", raising=False)
    return data, runs


def test_scans_stay_inside_the_operators_data_roots(roots: tuple[Path, Path], tmp_path: Path) -> None:
    data, _ = roots
    assert scan_file(data / "glioma" / "x.png", [str(data)]) == (data / "glioma" / "x.png").resolve()
    assert scan_file(data / "glioma" / "x.png", None).name == "x.png"  # no folder recorded: the operator's roots
    with pytest.raises(UnsafePathError):
        scan_file(tmp_path / "elsewhere.png", str(tmp_path))  # the store's folder cannot widen the roots


def test_a_store_row_naming_slash_cannot_open_the_host(roots: tuple[Path, Path]) -> None:
    """A run whose data root or out_dir is ``/`` used to make every file on the host viewable."""
    for target in ("/etc/passwd", "/etc/hostname"):
        with pytest.raises(UnsafePathError):
            scan_file(target, "/")
        with pytest.raises(UnsafePathError):
            viewable_run_file(target, "/", "heat map")
    _, runs = roots
    assert viewable_run_file(runs / "run-3" / "cams" / "0.png", str(runs / "run-3"), "heat map").name == "0.png"


def test_one_message_for_every_refusal_whether_or_not_the_file_exists(roots: tuple[Path, Path], tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("s")
    messages = set()
    for path in (tmp_path / "secret.txt", tmp_path / "missing.txt", Path("/etc/passwd"), Path("/no/such/file")):
        with pytest.raises(UnsafePathError) as refused:
            scan_file(path, None)
        messages.add(str(refused.value))
    assert len(messages) == 1 and "secret" not in messages.pop()


def test_roots_must_be_absolute_and_not_the_whole_host(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SSLMRI_ALLOW_BROAD_ROOTS", raising=False)
    for bad, why in (("data", "not an absolute path"), ("/", "file system root"), (str(Path.home()), "home folder")):
        monkeypatch.setenv("SSLMRI_DATA_ROOTS", bad)
        with pytest.raises(UsageError, match=why):
            data_roots()
    monkeypatch.setenv("SSLMRI_DATA_ROOTS", "/")
    monkeypatch.setenv("SSLMRI_ALLOW_BROAD_ROOTS", "1")  # the operator's explicit choice
    assert data_roots() == [Path("/")]


def test_a_link_out_of_the_data_folder_is_neither_trained_on_nor_shown(roots: tuple[Path, Path], tmp_path: Path) -> None:
    data, _ = roots
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"x")
    (data / "glioma" / "sub-02_link.png").symlink_to(outside)
    found = discover(data)
    assert (str(data / "glioma" / "sub-02_link.png"), "symbolic link to a file outside the data folder (not followed)") \
        in found.unusable
    with pytest.raises(UnsafePathError):
        scan_file(data / "glioma" / "sub-02_link.png", [str(data)])
    (data / "glioma" / "sub-03_inside.png").symlink_to(data / "glioma" / "x.png")  # a link within is fine
    assert any(f.rel_path == "glioma/sub-03_inside.png" for f in discover(data).files)
