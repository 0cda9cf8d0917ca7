"""The broken-file corpus (tests/helpers/bad_files.py) through every command that reads data: each file
is used or reported with its reason, nothing crashes, and the counts add up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bad_files import write_corpus
from cli import app

runner = CliRunner()


def _run(args: list[str]) -> tuple[int, dict, str]:
    result = runner.invoke(app, args)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr
    last = [ln for ln in result.stdout.splitlines() if ln.strip()][-1:] or ["null"]
    return result.exit_code, json.loads(last[0]), result.stderr


def _params(db: str, run_id: int) -> dict[str, str]:
    from sqlalchemy import select

    from sslmri_core.store.schema import Param
    from sslmri_core.store.writer import RunStore

    with RunStore(db).engine.connect() as conn:
        return dict(conn.execute(select(Param.key, Param.value).where(Param.run_id == run_id)).all())


def _unusable_tsv(out_dir: str) -> dict[str, str]:
    lines = (Path(out_dir) / "unusable.tsv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "path\treason"
    rows = dict(line.split("\t", 1) for line in lines[1:])
    assert all(reason.strip() for reason in rows.values())
    return rows


def test_corpus_through_data_check_pretrain_and_finetune(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSLMRI_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "data"
    expected = write_corpus(root)
    db, out = f"sqlite:///{tmp_path / 'runs.db'}", str(tmp_path / "runs")

    code, report, _ = _run(["data", "check", str(root), "--db", db, "--json"])
    assert code == 0
    unusable = {u["path"]: u["reason"] for u in report["unusable"]}
    assert report["files"] == report["usable"] + len(unusable) == len(expected)
    assert report["usable"] == sum(v is None for v in expected.values())

    tiny = ["--model", "test_resnet", "--image-size", "64", "--batch-size", "4", "--epochs", "1", "--no-progress"]
    code, pre, err = _run(["pretrain", "--data", str(root), *tiny, "--db", db, "--out", out, "--json"])
    assert code == 0, err
    params = _params(db, pre["run_id"])
    assert int(params["n_images"]) + int(params["n_excluded_test"]) == report["images"]
    assert int(params["n_unusable"]) == len(unusable)
    assert _unusable_tsv(pre["out_dir"]) == unusable  # every file it could not use, with the same reason

    code, ft, err = _run(["finetune", "--min-steps", "2", "--data", str(root), "--from-run", str(pre["run_id"]), *tiny[4:],
                          "--db", db, "--out", out, "--json"])
    assert code == 0, err
    params = _params(db, ft["run_id"])
    assert int(params["n_train"]) + int(params["n_val"]) + int(params["n_test"]) == report["images"]
    assert int(params["n_unusable"]) == len(unusable)
    assert _unusable_tsv(ft["out_dir"]) == unusable
    assert json.loads(params["classes"]) == sorted(c for c, n in report["classes"].items() if n)


def test_names_and_decoder_messages_are_printed_as_text_not_markup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow quotes a bad chunk type ``[/]a``; a folder name holds ``[bold]``: both print as they are."""
    from bad_files import markup_chunk_png, png_bytes

    monkeypatch.setenv("SSLMRI_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "data [bold]x[/]"
    (root / "glioma").mkdir(parents=True)
    (root / "glioma" / "sub-01 [final].png").write_bytes(png_bytes())
    (root / "glioma" / "sub-02_chunk.png").write_bytes(markup_chunk_png())
    (root / "notumor").mkdir()
    (root / "notumor" / "sub-03.png").write_bytes(png_bytes(value=30))
    result = CliRunner().invoke(app, ["data", "check", str(root), "--db", f"sqlite:///{tmp_path / 'r.db'}"])
    assert result.exit_code == 0, result.stderr
    assert "[/]a" in result.stderr and "data [bold]x[/]" in result.stderr  # the reason and the path, intact
