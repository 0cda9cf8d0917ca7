"""Leakage is data: given splits checked, the SSL pool and external folders compared by content,
equal step budgets, and every run saying whether (and why) it is leakage-prone."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from sslmri_core.store.writer import RunStore
from cli_json import invoke as _invoke

TINY = ["--model", "test_resnet", "--image-size", "64", "--batch-size", "8", "--precision", "fp32", "--no-progress"]


def _renamed_copy(src: Path, dst: Path) -> Path:
    """The folder again under other file names (same bytes): a path comparison finds none of it."""
    for path in src.rglob("*.png"):
        if path.stem.endswith("_mask"):
            continue
        target = dst / path.parent.relative_to(src) / f"copy-{path.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return dst


def _show(db: str, run_id: int) -> dict:
    code, shown, err = _invoke(["runs", "show", str(run_id), "--db", db, "--json"])
    assert code == 0, err
    return shown


def test_a_renamed_copy_given_by_a_relative_path_is_found_in_the_ssl_pool(
    synth_tumor: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    code, pre, err = _invoke(["pretrain", "--data", str(synth_tumor), "--include-test", "--max-steps", "1", *TINY,
                              "--db", db, "--out", str(tmp_path / "runs"), "--json"])
    assert code == 0, err
    _renamed_copy(synth_tumor, tmp_path / "again")
    monkeypatch.chdir(tmp_path)
    code, ft, err = _invoke(["finetune", "--data", "again", "--from-run", str(pre["run_id"]), "--mode", "linear",
                             "--min-steps", "2", "--epochs", "1", *TINY, "--db", db, "--out", "runs", "--json"])
    assert code == 0, err
    params = RunStore(db).params(ft["run_id"])
    assert int(params["ssl_pool_test_overlap"]) == int(params["n_test_groups"]) > 0
    assert params["data_root"] == str((tmp_path / "again").resolve())  # stored absolute, however it was typed
    shown = _show(db, ft["run_id"])
    assert shown["leakage_prone"] is True
    assert any("SSL pretraining pool" in r for r in shown["leakage_reasons"])


def test_a_clean_run_is_not_leakage_prone(synth_tumor: Path, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    code, pre, err = _invoke(["pretrain", "--data", str(synth_tumor), "--max-steps", "1", *TINY, "--db", db,
                              "--out", str(tmp_path / "runs"), "--json"])
    assert code == 0, err
    code, ft, err = _invoke(["finetune", "--data", str(synth_tumor), "--from-run", str(pre["run_id"]), "--mode",
                             "linear", "--min-steps", "2", "--epochs", "1", *TINY, "--db", db,
                             "--out", str(tmp_path / "runs"), "--json"])
    assert code == 0, err
    shown = _show(db, ft["run_id"])
    assert shown["leakage_prone"] is False and shown["leakage_reasons"] == []
    assert RunStore(db).params(ft["run_id"])["ssl_pool_test_overlap"] == "0"


def test_a_leaky_given_split_is_refused_unless_allowed(synth_tumor: Path, tmp_path: Path) -> None:
    data = tmp_path / "d"
    shutil.copytree(synth_tumor, data / "Training")
    shutil.copytree(synth_tumor, data / "Testing")
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    args = ["finetune", "--data", str(data), "--init", "scratch", "--use-given-split", "--min-steps", "2",
            "--epochs", "1", *TINY, "--db", db, "--out", str(tmp_path / "runs"), "--json"]
    code, _, err = _invoke(args)
    assert code == 2 and "20 subject(s)" in err and len(err.strip().splitlines()) == 1
    assert RunStore(db).list_runs() == []  # refused before anything is recorded
    code, ft, err = _invoke([*args[:-1], "--allow-leaky-split", "--json"])
    assert code == 0, err
    shown = _show(db, ft["run_id"])
    assert shown["leakage_prone"] is True and any("--allow-leaky-split" in r for r in shown["leakage_reasons"])


def test_every_fraction_trains_the_same_number_of_steps_never_below_the_floor(synth_tumor: Path, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    store = RunStore(db)
    steps = {}
    for fraction in ("0.25", "1.0"):
        code, ft, err = _invoke(["finetune", "--data", str(synth_tumor), "--init", "scratch", "--label-fraction",
                                 fraction, "--epochs", "1", "--min-steps", "6", *TINY, "--db", db,
                                 "--out", str(tmp_path / "runs"), "--json"])
        assert code == 0, err
        params = store.params(ft["run_id"])
        steps[fraction] = int(params["optimizer_steps"])
        last_step = max(s for s, _, _ in store.metric_series(ft["run_id"], "train_loss"))
        assert last_step == steps[fraction]  # trained exactly that many optimiser steps
    assert steps == {"0.25": 6, "1.0": 6}  # 1 epoch of 3 or 4 batches, lifted to the floor


def test_evaluate_leaves_out_copies_of_training_images_and_says_how_many(synth_tumor: Path, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    code, ft, err = _invoke(["finetune", "--data", str(synth_tumor), "--init", "scratch", "--min-steps", "2",
                             "--epochs", "1", *TINY, "--db", db, "--out", str(tmp_path / "runs"), "--json"])
    assert code == 0, err
    store = RunStore(db)
    train = [k for k, v in store.split_of(ft["run_id"]).items() if v == "train"]
    test = [k for k, v in store.split_of(ft["run_id"]).items() if v == "test"]
    external = tmp_path / "external"
    for i, key in enumerate(train[:3] + test):  # three renamed copies of training images, and unseen images
        target = external / Path(key).parent.name / f"scan{i}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(key, target)
    os.utime(external)
    code, out, err = _invoke(["evaluate", "--run", str(ft["run_id"]), "--data", str(external), "--db", db, "--json"])
    assert code == 0, err
    assert out["overlap_excluded"] == 3 and len(out["overlap"]) == 3
    assert store.params(out["run_id"])["n_test"] == str(len(test))
    assert _show(db, out["run_id"])["leakage_prone"] is False
    code, kept, err = _invoke(["evaluate", "--run", str(ft["run_id"]), "--data", str(external), "--keep-overlap",
                               "--db", db, "--json"])
    assert code == 0, err
    assert kept["overlap_excluded"] == 0 and store.params(kept["run_id"])["n_test"] == str(len(test) + 3)
    assert _show(db, kept["run_id"])["leakage_prone"] is True
