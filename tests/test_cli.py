"""The command line, end to end on generated data, through Typer's runner."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cli_json import invoke as _invoke
from tests.conftest import ROOT

TINY = ["--model", "test_resnet", "--image-size", "64", "--no-progress"]


def test_help_is_fast_and_does_not_import_torch() -> None:
    code = (
        "import runpy, sys; sys.argv = ['cli.py', '--help']\n"
        "try:\n    runpy.run_path('cli.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "pretrain" in out.stdout and out.stdout.strip().endswith("NO-TORCH")


def test_pretrain_finetune_runs_end_to_end(synth_tumor: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db, out = f"sqlite:///{tmp_path / 'runs.db'}", str(tmp_path / "runs")
    code, pre, err = _invoke(["pretrain", "--data", str(synth_tumor), *TINY, "--epochs", "2", "--max-steps", "3",
                              "--batch-size", "8", "--db", db, "--out", out, "--json"])
    assert code == 0, err
    assert pre["kind"] == "pretrain" and pre["status"] == "finished" and Path(pre["checkpoint"]).is_file()
    assert pre["metrics"]["steps"] == 3  # --max-steps stops across epochs

    code, ft, err = _invoke(["finetune", "--min-steps", "2", "--data", str(synth_tumor), "--from-run", str(pre["run_id"]),
                             "--epochs", "2", "--no-progress", "--db", db, "--out", out, "--json"])
    assert code == 0, err
    assert ft["kind"] == "finetune" and ft["status"] == "finished"
    from sslmri_core.store.queries import predictions_frame

    test = predictions_frame(db, ft["run_id"], "test")  # what was printed is what the stored predictions say
    assert len(test) > 0 and ft["metrics"]["test_accuracy"] == pytest.approx(test["correct"].mean())
    assert "test_macro_f1" in ft["metrics"]

    code, listed, _ = _invoke(["runs", "list", "--db", db, "--json"])
    assert code == 0 and [r["run_id"] for r in listed] == [pre["run_id"], ft["run_id"]]
    code, shown, _ = _invoke(["runs", "show", str(ft["run_id"]), "--db", db, "--json"])
    assert shown["parent_run_id"] == pre["run_id"]
    # model and size came from the pretraining run; the full config is stored
    assert shown["config"]["model"] == "test_resnet" and shown["config"]["image_size"] == 64
    _dashboard_reads_what_training_wrote(db, pre["run_id"], ft["run_id"], monkeypatch)


def _dashboard_reads_what_training_wrote(db: str, pre_id: int, ft_id: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rows the dashboard shows exist, through its own read-only queries and pages."""
    from streamlit.testing.v1 import AppTest

    from sslmri_core.store import queries
    from sslmri_core.store.engine import read_engine

    engine = read_engine(db)
    runs = queries.runs_frame(engine)
    assert set(runs["id"]) == {pre_id, ft_id} and set(runs["status"]) == {"finished"}
    loss = queries.metric_series(engine, pre_id, ["loss"])
    assert list(loss["step"]) == [1, 2, 3]
    matrix = queries.confusion(engine, ft_id, split="test", level="slice")
    assert matrix is not None and len(matrix.labels) == 4
    preds = queries.predictions_frame(engine, ft_id, split="test")
    assert len(preds) == sum(map(sum, matrix.matrix)) > 0

    monkeypatch.setenv("SSLMRI_DB", db)
    at = AppTest.from_file(str(ROOT / "dashboard" / "Home.py"), default_timeout=60).run()
    assert not at.exception
    at.switch_page("pages/1_Runs.py")
    at.query_params["run"] = str(ft_id)
    at.run()
    assert not at.exception and len(at.dataframe) > 0


def test_finetune_from_scratch_with_a_label_fraction(synth_tumor: Path, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    code, ft, err = _invoke(["finetune", "--min-steps", "2", "--data", str(synth_tumor), "--init", "scratch", *TINY, "--epochs", "1",
                             "--label-fraction", "0.3", "--db", db, "--out", str(tmp_path / "r"), "--json"])
    assert code == 0, err
    from sslmri_core.store.writer import RunStore

    store = RunStore(db)
    params = {p: v for p, v in _params(store, ft["run_id"]).items()}
    assert params["split_level"] == "subject"
    assert int(params["n_labeled"]) < int(params["n_train"])


def _params(store: object, run_id: int) -> dict[str, str]:
    from sqlalchemy import select

    from sslmri_core.store.schema import Param

    with store.engine.connect() as conn:  # type: ignore[attr-defined]
        return dict(conn.execute(select(Param.key, Param.value).where(Param.run_id == run_id)).all())


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["pretrain", "--model", "no_such_net"], "--model"),
        (["pretrain", "--image-size", "0"], "--image-size"),
        (["pretrain", "--epochs", "-1"], "--epochs"),
        (["pretrain", "--batch-size", "0"], "--batch-size"),
        (["pretrain", "--max-steps", "0"], "--max-steps"),
        (["pretrain", "--precision", "fp8"], "--precision"),
        (["pretrain", "--resume", "999"], "--resume 999"),
        (["pretrain", "--resume", "1", "--epochs", "3"], "leave out --epochs"),
        (["finetune", "--init", "scratch", "--model", "no_such_net"], "--model"),
        (["finetune", "--init", "scratch", "--image-size", "0"], "--image-size"),
        (["finetune", "--init", "scratch", "--epochs", "-1"], "--epochs"),
        (["finetune", "--init", "scratch", "--batch-size", "0"], "--batch-size"),
        (["finetune", "--init", "scratch", "--label-fraction", "1.5"], "--label-fraction"),
        (["finetune", "--init", "scratch", "--label-fraction", "0"], "--label-fraction"),
        (["finetune", "--init", "scratch", "--labels-per-class", "0"], "--labels-per-class"),
        (["finetune", "--init", "scratch", "--mode", "sideways"], "--mode"),
        (["finetune", "--from-run", "999"], "--from-run 999"),
        (["finetune"], "--from-run"),
        (["runs", "show", "999"], "no run store at"),
        (["pretrain", "--data", "/no/such/folder"], "not found"),
        (["runs", "list", "--db", "postgresql+psycopg://x:pw@127.0.0.1:1/none"], "--db"),
        (["db", "upgrade", "--db", "postgresql+psycopg://x:pw@127.0.0.1:1/none"], "--db"),
        (["runs", "list", "--db", "nosuchdb://x"], "--db"),
    ],
)
def test_bad_options_give_one_clear_line_and_exit_2(args: list[str], needle: str, tmp_path: Path) -> None:
    if "--db" not in args:
        args = [*args, "--db", f"sqlite:///{tmp_path / 'runs.db'}"]
    code, _, err = _invoke(args)
    assert code == 2
    assert needle in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err  # one line
    assert ":pw@" not in err  # a password in the URL is never shown


def test_db_upgrade_reports_the_revision_before_and_after(db_url: str) -> None:
    from alembic import command

    from sslmri_core.store.engine import make_engine
    from sslmri_core.store.migrate import alembic_config, head_revision

    engine = make_engine(db_url)
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
    engine.dispose()
    code, report, err = _invoke(["db", "upgrade", "--db", db_url, "--json"])
    assert code == 0, err
    assert (report["before"], report["after"]) == ("0001", head_revision())
    assert f"0001 -> {head_revision()}" in err
    code, report, err = _invoke(["db", "upgrade", "--db", db_url, "--json"])
    assert code == 0 and report["before"] == report["after"] == head_revision() and "already current" in err


def test_a_crashing_run_is_marked_failed(synth_tumor: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    import sslmri_core.train.pretrain as pretrain_module

    monkeypatch.setattr(pretrain_module, "nt_xent", lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    code, _, err = _invoke(["pretrain", "--data", str(synth_tumor), *TINY, "--epochs", "1", "--db", db,
                            "--out", str(tmp_path / "r")])
    assert code == 1 and "loss became nan" in err
    from sslmri_core.store.writer import RunStore

    (run,) = RunStore(db).list_runs()
    assert run.status == "failed" and "loss became nan" in (run.error or "")


def test_pretraining_pool_leaves_out_the_test_subjects(synth_tumor: Path, tmp_path: Path) -> None:
    db, out = f"sqlite:///{tmp_path / 'runs.db'}", str(tmp_path / "runs")
    from sslmri_core.store.writer import RunStore

    store = RunStore(db)
    overlaps = {}
    for flag in ("--exclude-test", "--include-test"):
        code, pre, err = _invoke(["pretrain", "--data", str(synth_tumor), *TINY, "--max-steps", "1", "--batch-size", "8",
                                  flag, "--db", db, "--out", out, "--json"])
        assert code == 0, err
        code, ft, err = _invoke(["finetune", "--min-steps", "2", "--data", str(synth_tumor), "--from-run", str(pre["run_id"]),
                                 "--epochs", "1", "--no-progress", "--db", db, "--out", out, "--json"])
        assert code == 0, err
        params = _params(store, ft["run_id"])
        overlaps[flag] = (int(params["ssl_pool_test_overlap_images"]), int(params["n_test"]), "leakage-prone" in err,
                          int(params["ssl_pool_test_overlap"]), int(params["n_test_groups"]))
        pool = store.split_of(pre["run_id"])
        test_keys = {k for k, v in store.split_of(ft["run_id"]).items() if v == "test"}
        if flag == "--exclude-test":
            assert {pool[k] for k in test_keys} == {"excluded"}
    assert overlaps["--exclude-test"][0] == 0 and not overlaps["--exclude-test"][2]
    n_test, n_groups = overlaps["--include-test"][1], overlaps["--include-test"][4]
    assert overlaps["--include-test"] == (n_test, n_test, True, n_groups, n_groups)
