"""`cli.py gradcam` end to end: a tiny classifier trained on an obvious lesion, then its CAMs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cli_json import invoke as _invoke
from PIL import Image
from typer.testing import CliRunner

from cli import app

runner = CliRunner()
SIZE = 64
SUMMARY_KEYS = ["run_id", "scans", "method", "mean_confidence", "mean_area_pct", "mean_in_brain", "deletion_drop",
                "random_drop", "baseline_drop", "road", "pointing_game", "pointing_game_chance", "lesion_energy"]




def _blob_set(root: Path, per_class: int = 70, seed: int = 0) -> Path:
    """Two classes of 64 px 'slices': a noisy head, with (``blob``) or without (``none``) a bright
    round lesion at a random place inside it; each blob image has its ``_mask.png`` beside it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for label in ("blob", "none"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            head = ((yy - 32) / 27.0) ** 2 + ((xx - 32) / 23.0) ** 2 <= 1
            img = np.where(head, 90.0, 8.0) + rng.normal(0, 12, (SIZE, SIZE))
            name = f"sub-{label}{i:03d}_slice-1"
            if label == "blob":
                cy, cx = rng.integers(16, 48), rng.integers(16, 48)
                lesion = (yy - cy) ** 2 + (xx - cx) ** 2 <= 6**2
                img[lesion] = 230.0
                Image.fromarray(lesion.astype(np.uint8) * 255).save(root / label / f"{name}_mask.png")
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / label / f"{name}.png")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A test_resnet fine-tuned from scratch on the blob set (fixed seeds)."""
    base = tmp_path_factory.mktemp("gradcam")
    data = _blob_set(base / "blobs")
    db, out = f"sqlite:///{base / 'runs.db'}", str(base / "runs")
    code, ft, err = _invoke(["finetune", "--data", str(data), "--init", "scratch", "--model", "test_resnet",
                             "--image-size", str(SIZE), "--epochs", "8", "--batch-size", "16", "--lr", "0.003",
                             "--seed", "0", "--no-progress", "--db", db, "--out", out, "--json"])
    assert code == 0, err
    assert ft["metrics"]["test_accuracy"] >= 0.8, ft["metrics"]  # the lesion is obvious
    return {"db": db, "out": out, "run": str(ft["run_id"]), "data": str(data)}


def _gradcam(trained: dict[str, str], *args: str) -> dict:
    code, summary, err = _invoke(["gradcam", "--run", trained["run"], *args, "--no-progress",
                                  "--db", trained["db"], "--out", trained["out"], "--json"])
    assert code == 0, err
    return summary


def _stored(trained: dict[str, str], run_id: int) -> tuple[dict[str, str], list[dict]]:
    """The gradcam run's parameters and its cam_stats rows, scan by scan."""
    from sqlalchemy import select

    from sslmri_core.store.queries import run_detail
    from sslmri_core.store.schema import CamStat
    from sslmri_core.store.writer import RunStore

    with RunStore(trained["db"]).engine.connect() as conn:
        rows = conn.execute(select(CamStat).where(CamStat.run_id == run_id).order_by(CamStat.scan)).mappings().all()
    return run_detail(trained["db"], run_id).params, [dict(r) for r in rows]


def test_gradcam_run_stores_maps_and_statistics(trained: dict[str, str]) -> None:
    """The default target layer (no --target-layer): the maps and statistics users see."""
    from sslmri_core.data.decode import decode_image
    from sslmri_core.explain.cam import load_model_for_run
    from sslmri_core.explain.cam_stats import area_pct, brain_mask, energy_share, pointing_chance
    from sslmri_core.store.writer import RunStore

    summary = _gradcam(trained)
    assert list(summary) == SUMMARY_KEYS
    store = RunStore(trained["db"])
    run = store.get_run(summary["run_id"])
    assert run.kind == "gradcam" and run.status == "finished" and run.parent_run_id == int(trained["run"])
    params, rows = _stored(trained, summary["run_id"])
    # The CLI explains the layer the dashboard's on-demand maps use by default.
    assert params["target_layer"] == load_model_for_run(trained["db"], int(trained["run"])).target_layer
    n_test = sum(1 for s in store.split_of(int(trained["run"])).values() if s == "test")
    assert summary["scans"] == len(rows) == n_test and summary["method"] == "gradcam"
    with_lesion = [r for r in rows if "/blob/" in r["scan"]]
    assert with_lesion and len(with_lesion) < len(rows)  # both classes are explained
    for row in rows:
        heat_img = Image.open(Path(run.out_dir) / row["heatmap_path"])
        assert heat_img.mode == "L" and heat_img.size == (SIZE, SIZE)
        assert row["threshold"] == 0.5 and row["model_run_id"] == int(trained["run"])
        assert (row["pointing_hit"] is None) == ("/none/" in row["scan"])  # lesion statistics only with a mask
        assert (row["pointing_chance"] is None) == (row["pointing_hit"] is None)
        assert all(isinstance(row[k], float) for k in ("deletion_drop", "random_drop", "baseline_drop"))
        assert row["raw_max"] > row["raw_mean"] > 0.0  # a real map, not a flat or empty one
        # The statistics are those of the stored map of this very scan (up to its 8-bit rounding).
        heat = np.asarray(heat_img, np.float32) / 255.0
        image = decode_image(row["scan"], SIZE)
        assert row["in_brain"] == pytest.approx(energy_share(heat, brain_mask(image)), abs=0.01), row["scan"]
        assert row["area_pct"] == pytest.approx(area_pct(heat, 0.5), abs=1.0), row["scan"]
        # in_brain's reference, measured at the map's own size (the head mask changes with resolution)
        assert row["head_area"] == pytest.approx(brain_mask(image).mean()), row["scan"]
        if "/blob/" in row["scan"]:
            mask = decode_image(row["scan"].replace(".png", "_mask.png"), SIZE) > 127
            assert row["lesion_energy"] == pytest.approx(energy_share(heat, mask), abs=0.01), row["scan"]
            assert row["lesion_area"] == pytest.approx(mask.mean()), row["scan"]
            assert row["pointing_chance"] == pytest.approx(pointing_chance(brain_mask(image), mask, 3)), row["scan"]
            assert 0.0 < row["pointing_chance"] < 0.5  # a small lesion in a big head
    # The pointing game and its chance are played on the correctly classified lesion scans only.
    played = [r for r in with_lesion if r["pred_label"] == r["true_label"]]
    assert played and summary["pointing_game"] == pytest.approx(np.mean([r["pointing_hit"] for r in played]))
    assert summary["pointing_game_chance"] == pytest.approx(np.mean([r["pointing_chance"] for r in played]))
    for key in ("deletion_drop", "random_drop", "baseline_drop"):
        assert summary[key] == pytest.approx(np.mean([r[key] for r in rows])), key
    assert summary["mean_in_brain"] == pytest.approx(np.mean([r["in_brain"] for r in rows]))
    assert summary["lesion_energy"] == pytest.approx(np.mean([r["lesion_energy"] for r in with_lesion]))

    # The trained model looks at the lesion: its CAM peak lands in it far more often than a random
    # point of the head does (the dilated lesion covers about 13% of the head), and it holds more than
    # its share of the energy.
    assert summary["pointing_game"] >= summary["pointing_game_chance"] + 0.3, summary
    assert summary["lesion_energy"] > 0.15, summary
    # Removing the top of the map costs the model more confidence than removing as many pixels at
    # random inside the head, or the head's core (the model-free map).
    assert summary["deletion_drop"] > summary["random_drop"], summary
    assert summary["deletion_drop"] > summary["baseline_drop"], summary


def test_an_explicit_target_layer_is_the_one_explained(trained: dict[str, str]) -> None:
    p_default, r_default = _stored(trained, _gradcam(trained, "--limit", "6")["run_id"])
    layer = next(n for n in ("layer3", "layer2") if f"encoder.{n}" != p_default["target_layer"])  # not the default
    p_other, r_other = _stored(trained, _gradcam(trained, "--limit", "6", "--target-layer", layer)["run_id"])
    assert p_other["target_layer"] == f"encoder.{layer}"
    assert [r["scan"] for r in r_other] == [r["scan"] for r in r_default] and len(r_other) == 6
    # Same scans, same model, same predictions: only the explained layer differs, and so do the maps.
    assert [r["pred_label"] for r in r_other] == [r["pred_label"] for r in r_default]
    assert all(a["raw_max"] != pytest.approx(b["raw_max"], rel=1e-3) for a, b in zip(r_other, r_default, strict=True))


def test_limit_samples_across_the_split_not_the_first_class(trained: dict[str, str]) -> None:
    _, rows = _stored(trained, _gradcam(trained, "--limit", "6")["run_id"])
    assert len(rows) == 6 and len({r["true_label"] for r in rows}) > 1  # folder order: one class first


def test_on_demand_map_matches_the_stored_one(trained: dict[str, str]) -> None:
    """What the dashboard computes for a scan is what `gradcam` stored for it (up to 8-bit rounding)."""
    from sqlalchemy import select

    from sslmri_core.explain.cam import explain_image, load_model_for_run
    from sslmri_core.store.schema import CamStat
    from sslmri_core.store.writer import RunStore

    code, summary, err = _invoke(["gradcam", "--run", trained["run"], "--limit", "3", "--method", "gradcam++",
                                  "--no-progress", "--db", trained["db"], "--out", trained["out"], "--json"])
    assert code == 0, err
    assert summary["scans"] == 3 and summary["method"] == "gradcam++"
    store = RunStore(trained["db"])
    with store.engine.connect() as conn:
        row = conn.execute(select(CamStat).where(CamStat.run_id == summary["run_id"])).mappings().first()
    loaded = load_model_for_run(trained["db"], int(trained["run"]))
    assert loaded.classes == ["blob", "none"] and loaded.image_size == SIZE
    out = explain_image(loaded, np.asarray(Image.open(row["scan"])), method="gradcam++")
    stored = np.asarray(Image.open(Path(store.get_run(summary["run_id"]).out_dir) / row["heatmap_path"])) / 255.0
    np.testing.assert_allclose(out.cam, stored, atol=1.0 / 255 + 1e-3)
    assert out.pred_label == row["pred_label"] and out.confidence == pytest.approx(row["confidence"], abs=1e-4)
    assert out.raw_max == pytest.approx(row["raw_max"], rel=1e-3)


def test_a_run_with_test_time_flips_is_explained_with_its_own_predictions(trained: dict[str, str]) -> None:
    """`gradcam` and the dashboard give a --tta run's prediction and confidence as the run scored them
    (the mean over each image and its mirror), not one unflipped pass's."""
    from sqlalchemy import select

    from sslmri_core.explain.cam import explain_image, load_model_for_run
    from sslmri_core.store import queries
    from sslmri_core.store.schema import CamStat
    from sslmri_core.store.writer import RunStore

    code, ft, err = _invoke(["finetune", "--data", trained["data"], "--init", "scratch", "--model", "test_resnet",
                             "--image-size", str(SIZE), "--epochs", "1", "--batch-size", "16", "--tta", "--seed", "0",
                             "--precision", "fp32", "--no-progress", "--db", trained["db"], "--out", trained["out"], "--json"])
    assert code == 0, err
    stored = queries.predictions_frame(trained["db"], ft["run_id"], "test").set_index("scan")
    code, summary, err = _invoke(["gradcam", "--run", str(ft["run_id"]), "--limit", "6", "--no-progress",
                                  "--db", trained["db"], "--out", trained["out"], "--json"])
    assert code == 0, err
    with RunStore(trained["db"]).engine.connect() as conn:
        rows = conn.execute(select(CamStat).where(CamStat.run_id == summary["run_id"])).mappings().all()
    loaded = load_model_for_run(trained["db"], ft["run_id"])
    assert loaded.tta and len(rows) == 6
    for row in rows:
        run_said = stored.loc[row["scan"]]
        assert row["pred_label"] == run_said["pred_label"]
        assert row["confidence"] == pytest.approx(run_said["confidence"], abs=1e-4)
        out = explain_image(loaded, np.asarray(Image.open(row["scan"])))
        assert out.pred_label == run_said["pred_label"]
        assert out.confidence == pytest.approx(run_said["confidence"], abs=1e-4)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--run", "1", "--method", "gradcam-9000"], "--method"),
        (["--run", "999"], "--run 999"),
        ([], "--run"),
        (["--run", "1", "--threshold", "2"], "--threshold"),
        (["--run", "1", "--split", "holdout"], "--split"),
        (["--run", "1", "--limit", "0"], "--limit"),
        (["--run", "1", "--road-percentiles", "20,x"], "--road-percentiles"),
        (["--run", "1", "--road-percentiles", "100"], "--road-percentiles"),
    ],
)
def test_bad_options_give_one_clear_line_and_exit_2(args: list[str], needle: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["gradcam", *args, "--db", f"sqlite:///{tmp_path / 'runs.db'}", "--json"])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in result.output


def test_unknown_class_or_layer_or_a_pretraining_run(trained: dict[str, str]) -> None:
    for args, needle in ((["--target-class", "glioma"], "--target-class"),
                         (["--target-layer", "layer9"], "--target-layer")):
        code, _, err = _invoke(["gradcam", "--run", trained["run"], *args, "--db", trained["db"],
                                "--out", trained["out"]])
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
    from sslmri_core.store.writer import RunStore

    store = RunStore(trained["db"])
    pretraining = store.start_run("pretrain", {"model": "test_resnet"})
    store.end_run(pretraining, "finished")
    n_runs = len(store.list_runs())
    code, _, err = _invoke(["gradcam", "--run", str(pretraining), "--db", trained["db"], "--out", trained["out"]])
    assert code == 2 and f"--run {pretraining} is a pretrain run" in err and len(err.strip().splitlines()) == 1, err
    assert len(store.list_runs()) == n_runs  # refused before a gradcam run was recorded
