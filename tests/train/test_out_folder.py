"""Output folders: an ``--out`` that cannot be written is one line before anything is recorded, and a
full (or read-only) disk while saving a checkpoint is one line that names the checkpoint kept."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest
import torch
from cli_json import invoke

from sslmri_core.errors import RunFailed, UsageError
from sslmri_core.store.lifecycle import writable_root
from sslmri_core.store.writer import RunStore
from sslmri_core.train import checkpoints
from sslmri_core.train.checkpoints import atomic_save, load_checkpoint


def _bad_out(tmp_path: Path, where: str) -> tuple[Path, str]:
    """An output root that cannot be written (tests run as root: chmod would not stop writes), and the reason."""
    if where == "proc":
        return Path("/proc/forbidden"), "cannot write there"
    (tmp_path / "afile").write_text("a file, not a folder")
    return (tmp_path / "afile" / "sub", "cannot write there (Not a directory)") if where == "under_file" \
        else (tmp_path / "afile", "not a folder")


@pytest.mark.parametrize("where", ["proc", "under_file", "a_file"])
def test_an_unwritable_out_is_one_line_and_records_no_run(synth_tumor: Path, tmp_path: Path, where: str) -> None:
    out, reason = _bad_out(tmp_path, where)
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    code, _, err = invoke(["finetune", "--data", str(synth_tumor), "--init", "scratch", "--model", "test_resnet",
                           "--image-size", "64", "--batch-size", "8", "--epochs", "1", "--min-steps", "2",
                           "--no-progress", "--db", db, "--out", str(out)])
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"--out {out}" in err and reason in err
    assert RunStore(db).list_runs() == []  # nothing recorded


def test_a_missing_out_is_made_and_probed(tmp_path: Path) -> None:
    root = writable_root(tmp_path / "new" / "runs")
    assert root.is_dir() and list(root.iterdir()) == []  # the probe file is gone
    with pytest.raises(UsageError, match="--out /proc/x: cannot write there"):
        writable_root("/proc/x")


def _full_disk(code: int) -> Any:
    """A ``torch.save`` that writes half a checkpoint (to a path or a file), then hits a full disk."""
    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(f, str | Path):
            Path(f).write_bytes(b"half a checkpoint")
        else:
            f.write(b"half a checkpoint")
        raise OSError(code, "simulated")

    return save


@pytest.mark.parametrize("code, said", [(errno.ENOSPC, "no space left on device"),
                                        (errno.EROFS, "read-only file system")])
def test_a_full_disk_keeps_the_last_checkpoint_and_says_so_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, said: str
) -> None:
    path = tmp_path / "run-7" / "checkpoint.pt"
    atomic_save({"kind": "pretrain", "run_id": 7, "step": 10, "w": torch.ones(3)}, path)
    monkeypatch.setattr(checkpoints.torch, "save", _full_disk(code))
    with pytest.raises(RunFailed) as caught:
        atomic_save({"kind": "pretrain", "run_id": 7, "step": 20, "w": torch.zeros(3)}, path)
    message = str(caught.value)
    assert message == (f"{said} writing {path}; the last complete checkpoint is kept at {path} "
                       "(resume with --resume 7 when there is space)")
    assert caught.value.exit_code == 1 and caught.value.__cause__ is None
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint.pt"]  # the temporary file is gone
    kept = load_checkpoint(path)
    assert kept["step"] == 10 and torch.equal(kept["w"], torch.ones(3))


def test_a_full_disk_before_the_first_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "run-3" / "checkpoint.pt"
    monkeypatch.setattr(checkpoints.torch, "save", _full_disk(errno.ENOSPC))
    with pytest.raises(RunFailed, match="no complete checkpoint was written yet"):
        atomic_save({"kind": "finetune", "run_id": 3}, path)
    assert list(path.parent.iterdir()) == []


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_torch_writing_to_a_really_full_device_is_the_same_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a simulated error: torch's own writer fills /dev/full (ENOSPC) behind the temporary file."""
    path = tmp_path / "checkpoint.pt"
    atomic_save({"kind": "pretrain", "run_id": 5, "step": 1}, path)
    real_fdopen = checkpoints.os.fdopen

    def full_device(fd: int, mode: str) -> Any:
        checkpoints.os.close(fd)
        return real_fdopen(checkpoints.os.open("/dev/full", checkpoints.os.O_WRONLY), mode)

    monkeypatch.setattr(checkpoints.os, "fdopen", full_device)
    with pytest.raises(RunFailed, match=r"^no space left on device writing .*--resume 5 when there is space\)$"):
        atomic_save({"kind": "pretrain", "run_id": 5, "step": 2, "w": torch.zeros(4096)}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    assert load_checkpoint(path)["step"] == 1
