"""`cli.py embed`: 2-D maps of a run's encoder features, stored and read back by the dashboard's query."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli_json import invoke as _invoke
from sslmri_core.store import queries

TINY = ["--model", "test_resnet", "--image-size", "64", "--no-progress"]


@pytest.fixture(scope="module")
def trained(synth_tumor: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, int, int]:
    """A one-step pretraining run and a one-epoch fine-tuning run on the tiny built-in tumour set."""
    base = tmp_path_factory.mktemp("embed")
    db = f"sqlite:///{base / 'runs.db'}"
    out = str(base / "runs")
    code, pre, err = _invoke(["pretrain", "--data", str(synth_tumor), *TINY, "--batch-size", "8", "--max-steps", "1",
                              "--db", db, "--out", out, "--json"])
    assert code == 0, err
    code, ft, err = _invoke(["finetune", "--min-steps", "2", "--data", str(synth_tumor), "--from-run", str(pre["run_id"]), "--epochs", "1",
                             "--batch-size", "8", "--no-progress", "--db", db, "--out", out, "--json"])
    assert code == 0, err
    return db, int(pre["run_id"]), int(ft["run_id"])


def test_embed_finetune_run_stores_every_image_with_its_split(trained: tuple[str, int, int]) -> None:
    db, _, ft = trained
    code, result, err = _invoke(["embed", "--run", str(ft), "--method", "tsne", "--db", db, "--json"])
    assert code == 0, err
    assert result["n_points"] == 40 and set(result["splits"]) == {"train", "val", "test"}  # 4 x 5 subjects x 2 slices
    points = queries.embeddings_frame(db, ft, "tsne")
    assert len(points) == 40 and points[["x", "y"]].notna().all().all()
    assert set(points["label"]) == {"glioma", "meningioma", "notumor", "pituitary"}
    assert points["subject"].notna().all() and points["scan"].str.endswith(".png").all()
    listed = queries.embedding_runs(db)
    assert (int(listed.iloc[0]["run_id"]), listed.iloc[0]["method"], int(listed.iloc[0]["n"])) == (ft, "tsne", 40)


def test_embed_pretrain_run_with_umap_and_one_split(trained: tuple[str, int, int]) -> None:
    db, pre, ft = trained
    code, result, err = _invoke(["embed", "--run", str(pre), "--method", "umap", "--db", db, "--json"])
    assert code == 0, err
    assert result["method"] == "umap" and set(result["splits"]) <= {"pool", "excluded"}
    code, result, err = _invoke(["embed", "--run", str(ft), "--method", "tsne", "--split", "test", "--db", db, "--json"])
    assert code == 0, err
    assert set(result["splits"]) == {"test"}
    assert len(queries.embeddings_frame(db, ft, "tsne")) == result["n_points"]  # replaced, not appended


@pytest.mark.parametrize(("args", "message"), [
    (["--run", "999"], "--run 999"),
    (["--method", "pca"], "--method must be one of umap, tsne"),
    (["--split", "holdout"], "--split holdout"),
])
def test_embed_bad_input_is_one_line_exit_2(trained: tuple[str, int, int], args: list[str], message: str) -> None:
    db, _, ft = trained
    full = ["embed", "--run", str(ft), "--db", db, *args] if "--run" not in args else ["embed", *args, "--db", db]
    code, _, err = _invoke(full)
    assert code == 2 and message in err and "Traceback" not in err
