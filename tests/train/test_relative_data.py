"""A relative ``--data`` is stored absolute: the runs' data is found again from any working directory."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_json import invoke

from sslmri_core.store.writer import RunStore

FAST = ["--model", "test_resnet", "--image-size", "64", "--epochs", "1", "--batch-size", "8", "--precision", "fp32",
        "--no-progress"]


def _nan_loss(*args: object, **kwargs: object) -> object:
    """NT-Xent gone NaN: the pretraining run fails before its first checkpoint (resumable from the start)."""
    from sslmri_core.train.losses import nt_xent

    return nt_xent(*args, **kwargs) * float("nan")  # type: ignore[arg-type, operator]


def test_runs_given_a_relative_data_folder_work_from_another_directory(
    synth_tumor: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, out = f"sqlite:///{tmp_path / 'runs.db'}", str(tmp_path / "runs")
    where = ["--db", db, "--out", out, "--json"]
    monkeypatch.chdir(synth_tumor.parent)
    code, pre, err = invoke(["pretrain", "--data", synth_tumor.name, *FAST, "--max-steps", "1", *where])
    assert code == 0, err
    code, ft, err = invoke(["finetune", "--data", synth_tumor.name, "--from-run", str(pre["run_id"]), *FAST,
                            "--min-steps", "2", *where])
    assert code == 0, err
    with monkeypatch.context() as patch:
        patch.setattr("sslmri_core.train.pretrain.nt_xent", _nan_loss)
        code, _, err = invoke(["pretrain", "--data", synth_tumor.name, *FAST, "--max-steps", "1", *where])
    assert code == 1 and "loss became nan" in err, err
    failed = max(r.id for r in RunStore(db).list_runs("pretrain"))

    store = RunStore(db)
    absolute = str(synth_tumor.resolve())
    assert store.get_run(pre["run_id"]).config["data"] == [absolute]
    assert store.get_run(ft["run_id"]).config["data"] == absolute
    assert store.get_run(failed).config["data"] == [absolute]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, cams, err = invoke(["gradcam", "--run", str(ft["run_id"]), "--limit", "2", "--road-percentiles", "",
                              "--no-progress", *where])
    assert code == 0 and cams["scans"] == 2, err
    for run in (pre["run_id"], ft["run_id"]):
        code, mapped, err = invoke(["embed", "--run", str(run), "--method", "tsne", "--db", db, "--json"])
        assert code == 0 and mapped["n_points"] > 0, err
    code, resumed, err = invoke(["pretrain", "--resume", str(failed), "--db", db, "--json", "--no-progress"])
    assert code == 0 and resumed["run_id"] == failed, err
