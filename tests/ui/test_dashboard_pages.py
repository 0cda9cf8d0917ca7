"""Every dashboard page under AppTest on one populated store, their empty states, and upload validation."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from dashboard_store import ARMS, FRACTIONS, SEEDS, populate_full_store
from test_dashboard import assert_no_exception, page_text, plain

ROOT = Path(__file__).resolve().parents[2]
HOME = ROOT / "dashboard" / "Home.py"
PAGES = {
    "ssl": "pages/2_SSL_vs_Supervised.py",
    "confusion": "pages/3_Confusion.py",
    "scans": "pages/4_Scan_Explorer.py",
    "embeddings": "pages/5_Embeddings.py",
    "data": "pages/6_Data.py",
}
TIMEOUT_S = 60
sys.path.insert(0, str(ROOT / "dashboard"))
import scan_tools  # noqa: E402  (the page's upload handling, importable without Streamlit)


@pytest.fixture(scope="module")
def full_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, int]]:
    return populate_full_store(tmp_path_factory.mktemp("dash-full"))


@pytest.fixture
def store(full_store: tuple[str, dict[str, int]], monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    url, ids = full_store
    monkeypatch.setenv("SSLMRI_DB", url)
    return ids


def open_page(page: str | None, query: dict[str, str] | None = None, state: dict[str, object] | None = None) -> AppTest:
    at = AppTest.from_file(str(HOME), default_timeout=TIMEOUT_S)
    for key, value in (state or {}).items():
        at.session_state[key] = value
    at.run()
    if page:
        at.switch_page(PAGES[page])
        at.query_params.update(query or {})
        at.run()
    assert_no_exception(at)
    return at


def test_home_shows_full_label_arms_experiments_and_audit_warning(store: dict[str, int]) -> None:
    at = open_page(None)
    text = page_text(at)
    assert "Full labels: each arm in the latest experiment per task" in text
    headline = at.dataframe[0].value
    assert set(headline["arm"]) == set(ARMS) and set(headline["fraction"]) == {"100%"}
    assert (headline["experiment_id"] == store["experiment"]).all() and (headline["n_test_subjects"] == 40).all()
    assert "Latest experiments" in text and str(store["experiment"]) in text
    assert any("Data audit" in e.value and "duplicate groups across splits: 1" in plain(e.value) for e in at.error)


def test_ssl_page_curves_paired_table_and_csv(store: dict[str, int]) -> None:
    at = open_page("ssl")
    text = page_text(at)
    assert at.selectbox(key="experiment").value == store["experiment"]
    assert len(at.get("plotly_chart")) == 2  # curve and paired difference
    table = at.dataframe[0].value
    assert set(table["arm"]) == set(ARMS) and len(table) == len(ARMS) * len(FRACTIONS)
    assert (table["n_seeds"] == len(SEEDS)).all() and (table["n_test_subjects"] == 40).all()
    assert (table["lo"] < table["mean"]).all() and (table["mean"] < table["hi"]).all()  # 40 subjects: real intervals
    assert "glioma 10" in table["n_test_subjects_per_class"].iloc[0]
    paired = at.dataframe[1].value
    assert set(zip(paired["arm"], paired["baseline"], strict=True)) == {("ssl-linear", "scratch"), ("ssl-full", "scratch")}
    assert "Paired differences: SSL arm minus baseline" in text and "its randomness is not in these intervals" in text
    assert [b for b in at.get("download_button")]
    at.selectbox(key="metric").set_value("test_subject_accuracy").run()
    assert_no_exception(at)
    assert "accuracy (subject level)" in at.get("plotly_chart")[0].proto.spec


def test_ssl_page_lists_single_runs_without_averaging_them(store: dict[str, int]) -> None:
    at = open_page("ssl")
    text = page_text(at)
    assert "Single fine-tuning runs (5)" in text  # populate_store's three and the two scan models
    single = at.dataframe[-1].value
    assert {store["scratch"], store["ssl_new"], store["scan_ssl"]} <= set(single["run_id"])
    # the single scratch run at 100% is not one more "seed" of the experiment's scratch arm
    assert (at.dataframe[0].value["n_seeds"] == len(SEEDS)).all()


def _two_experiment_store(root: Path) -> tuple[str, dict[str, int]]:
    from dashboard_store import add_experiment

    from sslmri_core.store.writer import RunStore

    url = f"sqlite:///{root / 'runs.db'}"
    store = RunStore(url)
    ids = {"old": add_experiment(store, score=lambda arm, fraction, seed: 0.8, seeds=(0, 1)),
           "new": add_experiment(store, score=lambda arm, fraction, seed: 0.3, seeds=(0, 1))}
    store.engine.dispose()
    return url, ids


def test_ssl_page_shows_one_experiment_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url, ids = _two_experiment_store(tmp_path)
    monkeypatch.setenv("SSLMRI_DB", url)
    at = open_page("ssl")
    assert at.selectbox(key="experiment").options == [f"#{ids['new']} (18 finished runs)",
                                                      f"#{ids['old']} (18 finished runs)"]
    table = at.dataframe[0].value
    assert table["mean"].round(6).tolist() == [0.3] * 9 and (table["n_seeds"] == 2).all()  # pooled: 0.55 over 4
    at.selectbox(key="experiment").set_value(ids["old"]).run()
    assert_no_exception(at)
    assert at.dataframe[0].value["mean"].round(6).tolist() == [0.8] * 9


def test_ssl_page_leaves_leakage_prone_runs_out_until_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dashboard_store import add_experiment

    from sslmri_core.store.writer import RunStore

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    add_experiment(RunStore(url), leaky_arms=("ssl-full",), seeds=(0,))
    monkeypatch.setenv("SSLMRI_DB", url)
    at = open_page("ssl")
    assert set(at.dataframe[0].value["arm"]) == {"ssl-linear", "scratch"}
    assert any("3 leakage-prone runs" in w.value and "left out" in w.value for w in at.warning)
    at.toggle(key="show_leaky").set_value(True).run()
    assert_no_exception(at)
    table = at.dataframe[0].value
    assert set(table["arm"]) == set(ARMS) and table.set_index("arm")["leakage_prone"].loc["ssl-full"].all()
    assert any("3 leakage-prone runs are included" in e.value for e in at.error)


def test_home_shows_full_labels_not_the_best_fraction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dashboard_store import add_experiment

    from sslmri_core.store.writer import RunStore

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    best_at_half = {0.1: 0.4, 0.5: 0.9, 1.0: 0.6}
    add_experiment(RunStore(url), score=lambda arm, fraction, seed: best_at_half[fraction], seeds=(0,))
    monkeypatch.setenv("SSLMRI_DB", url)
    headline = open_page(None).dataframe[0].value
    assert set(headline["fraction"]) == {"100%"} and headline["mean"].round(6).tolist() == [0.6] * 3


def test_confusion_page_single_and_side_by_side(store: dict[str, int]) -> None:
    at = open_page("confusion", {"run": str(store["scan_ssl"])})
    assert at.selectbox(key="run_a").value == store["scan_ssl"]
    assert len(at.get("plotly_chart")) == 1
    at.selectbox(key="run_b").set_value(store["scan_scratch"]).run()
    assert_no_exception(at)
    assert len(at.get("plotly_chart")) == 3  # both matrices and their difference
    assert "Difference" in page_text(at)


def _viewer_spec(at: AppTest) -> dict:
    """The slice viewer's Plotly figure (the chart with an image trace)."""
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    viewer = [f for f in specs if any(t.get("type") == "image" for t in f["data"])]
    assert viewer, "the slice is shown as a Plotly image"
    return viewer[0]


def _strip_order(at: AppTest) -> list[str]:
    """The slice names of the strip, left to right."""
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    strip = next(f for f in specs if any(t.get("type") == "bar" for t in f["data"]))
    placed = [(x, custom[0]) for t in strip["data"] for x, custom in zip(t["x"], t["customdata"], strict=True)]
    return [name for _, name in sorted(placed)]


def test_scan_explorer_shows_scan_overlay_and_steps_slices(store: dict[str, int]) -> None:
    at = open_page("scans", {"run": str(store["scan_ssl"])})
    assert "Prediction:" in page_text(at)
    assert at.selectbox(key="model").value == store["scan_ssl"]
    viewer = _viewer_spec(at)
    assert viewer["layout"]["width"] == viewer["layout"]["height"] == scan_tools.VIEW_PX  # one fixed size
    assert viewer["layout"]["yaxis"]["scaleanchor"] == "x"
    assert "grey %{z}" in viewer["data"][1]["hovertemplate"] and "customdata" in viewer["data"][1]["hovertemplate"]
    first_slice = at.selectbox(key="scan_slice").value
    assert first_slice.endswith("_slice-2.png")  # the stored positions (-5, 20, 42.5) order 2, 1, 3
    next_button = next(b for b in at.button if "Next" in str(b.label))
    next_button.click().run()
    assert_no_exception(at)
    assert at.selectbox(key="scan_slice").value.endswith("_slice-1.png")
    assert "Stored Grad-CAM statistics" in page_text(at)


def test_scan_explorer_puts_the_patient_decision_first_and_orders_the_strip_by_position(
        full_store: tuple[str, dict[str, int]], store: dict[str, int]) -> None:
    from sslmri_core.evaluation.metrics import patient_decision
    from sslmri_core.store import queries

    at = open_page("scans", {"run": str(store["scan_ssl"])})
    assert "How to read this page" in at.caption[0].value
    preds = queries.predictions_frame(full_store[0], store["scan_ssl"])
    mine = preds[(preds["subject"] == "sub-00") & (preds["split"] == "test")]
    expected = patient_decision(np.array(mine["probs"].tolist()), ["glioma", "meningioma", "notumor", "pituitary"])
    heading = plain(at.markdown[0].value)
    assert heading == f"#### Patient sub-00: **{expected.label}** · confidence {expected.confidence:.0%}"
    assert f"decided from {expected.n_slices} test slices" in plain(at.markdown[1].value)
    assert ("correct" if expected.label == "glioma" else "wrong") in at.markdown[1].value
    assert _strip_order(at) == ["sub-00_slice-2.png", "sub-00_slice-1.png", "sub-00_slice-3.png"]
    positions = queries.slice_positions(full_store[0], store["scan_ssl"])  # predictions x manifest rows, key == scan
    assert len(positions) == len(preds) and positions[mine["scan"].iloc[0]] in (20.0, -5.0, 42.5)
    assert queries.slice_positions(full_store[0], store["scratch"]) == {}  # a run without a stored data set
    assert [o.split(" · ")[-1] for o in at.selectbox(key="scan_slice").options] == _strip_order(at)


def test_slice_order_falls_back_to_the_number_in_the_name() -> None:
    keys = ["/d/a/s_10.png", "/d/a/s_2.png", "/d/a/s_1.png"]
    assert [k for k, _ in scan_tools.slice_order(keys, {})] == ["/d/a/s_1.png", "/d/a/s_2.png", "/d/a/s_10.png"]
    partial = {"/d/a/s_10.png": 1.0}  # positions for some slices only (an old manifest): the names decide
    assert scan_tools.slice_order(keys, partial)[0][0] == "/d/a/s_1.png"
    volume = ["/d/v.nii.gz#z=12", "/d/v.nii.gz#z=3"]
    assert [p for _, p in scan_tools.slice_order(volume, {})] == [3.0, 12.0]


def test_scan_explorer_link_opens_a_run_of_another_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """?run= of a run whose task is not the first in the task picker opens that run, in its task."""
    from dashboard_store import add_scan_models

    from sslmri_core.store.writer import RunStore

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    store = RunStore(url)
    ids = add_scan_models(store, tmp_path)
    other = store.start_run("finetune", {"init": "scratch", "mode": "full", "model": "test_resnet"}, task="vascular")
    store.log_params(other, {"data_root": str(tmp_path / "data" / "tumor"), "classes": json.dumps(["a", "b"])})
    scan = str(next((tmp_path / "data" / "tumor" / "glioma").glob("*.png")))
    store.log_predictions(other, [{"split": "test", "scan": scan, "subject": "v1", "true_label": "a",
                                   "pred_label": "b", "confidence": 0.6, "probs": [0.4, 0.6]}])
    store.end_run(other)
    store.engine.dispose()
    monkeypatch.setenv("SSLMRI_DB", url)
    at = open_page("scans", {"run": str(other)}, {"on_demand": False})
    assert at.selectbox(key="task").options == ["tumor", "vascular"]
    assert at.selectbox(key="task").value == "vascular" and at.selectbox(key="model").value == other
    assert "Patient v1: **b** · confidence 60%" in plain(at.markdown[0].value)
    first = open_page("scans", {"run": str(ids["scan_scratch"])}, {"on_demand": False})
    assert first.selectbox(key="task").value == "tumor" and first.selectbox(key="model").value == ids["scan_scratch"]


def test_images_without_a_subject_id_are_each_their_own_patient(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    """A folder without subject ids (the public tumour set) must not become one 'patient' of every test image."""
    from dashboard_store import add_scan_models

    from sslmri_core.store.writer import RunStore

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    store = RunStore(url)
    add_scan_models(store, tmp_path)
    run = store.start_run("finetune", {"init": "scratch", "mode": "full", "model": "test_resnet"}, task="tumor")
    store.log_params(run, {"data_root": str(tmp_path / "data" / "tumor"), "classes": json.dumps(["a", "b"])})
    scans = sorted(str(p) for p in (tmp_path / "data" / "tumor" / "glioma").glob("*.png"))[:2]
    store.log_predictions(run, [{"split": "test", "scan": s, "subject": None, "true_label": "a", "pred_label": p,
                                 "confidence": 0.9, "probs": probs}
                                for s, p, probs in zip(scans, ("a", "b"), ([0.9, 0.1], [0.1, 0.9]), strict=True)])
    store.end_run(run)
    store.engine.dispose()
    monkeypatch.setenv("SSLMRI_DB", url)
    at = open_page("scans", {"run": str(run)}, {"on_demand": False})
    assert len(at.selectbox(key="subject").options) == 2  # two images, two patients
    assert "(no subject id) glioma/" in plain(at.markdown[0].value) and "confidence 90%" in at.markdown[0].value
    assert "decided from 1 test slices" in plain(at.markdown[1].value)


def test_scan_explorer_opens_a_stored_nifti_slice(store: dict[str, int]) -> None:
    from dashboard_store import NIFTI_SLICES, NIFTI_SUBJECT

    at = open_page("scans", {"run": str(store["scan_ssl"])}, {"on_demand": False})
    at.selectbox(key="subject").set_value(NIFTI_SUBJECT).run()
    assert_no_exception(at)
    assert not [w.value for w in at.warning if "Cannot show this scan" in w.value]
    options = at.selectbox(key="scan_slice").options
    assert [o.split("#z=")[-1] for o in options] == [str(z) for z in NIFTI_SLICES]
    assert _viewer_spec(at)["data"][0]["source"].startswith("data:image/png;base64,")
    assert "Patient sub\\-90: **glioma**" in at.markdown[0].value  # two slices of three say glioma


def test_scan_explorer_window_presets_set_the_sliders(store: dict[str, int]) -> None:
    at = open_page("scans", {"run": str(store["scan_ssl"])}, {"on_demand": False})
    image = scan_tools.load_scan(at.selectbox(key="scan_slice").value, [str(Path(at.selectbox(key="scan_slice").value)
                                                                            .parents[2])])
    presets = scan_tools.window_presets(image)
    for name, key in (("Brain", "preset_brain"), ("Auto", "preset_auto"), ("Full range", "preset_full")):
        at.button(key=key).click().run()
        assert_no_exception(at)
        assert (at.slider(key="level").value, at.slider(key="width").value) == presets[name], name
    assert presets["Full range"] == (128, 255) and presets["Brain"] != presets["Full range"]


def test_scan_explorer_statistics_carry_their_references(store: dict[str, int]) -> None:
    at = open_page("scans", {"run": str(store["scan_ssl"])}, {"on_demand": False})
    readings = next(t.value for t in at.table if "reference" in t.value)
    rows = readings.set_index("statistic")
    assert "random region in the head 5.0%" in rows.loc["Deletion drop", "reference"]
    assert rows.loc["Deletion drop", "value"] == "30.0%"
    assert "head-centre region 12.0%" in rows.loc["Deletion drop", "reference"]
    assert rows.loc["Pointing game", "reference"] == "chance 8.0%"
    assert rows.loc["In-head energy", "reference"] == "head area 42.0%"  # stored at the map's size
    assert rows.loc["Lesion energy", "reference"] == "lesion area 3.0%"
    assert readings["what it says"].str.len().min() > 20  # every number explained in one line


def test_statistics_stored_before_head_area_get_it_at_the_maps_size() -> None:
    """in_brain was measured at the model's size, and the head mask changes with resolution: its reference
    must be too. Two discs joined by a 12 px bridge: one head at 512 px, the bridge gone at 64 px."""
    from sslmri_core.explain.cam_stats import brain_mask

    yy, xx = np.mgrid[:512, :512]
    image = np.zeros((512, 512), np.uint8)
    image[((yy - 256) ** 2 + (xx - 150) ** 2) < 100**2] = 200
    image[((yy - 256) ** 2 + (xx - 370) ** 2) < 90**2] = 200
    image[250:262, 240:290] = 200
    at_map = float(brain_mask(scan_tools.resize_grey(image, 64)).mean())
    assert abs(at_map - brain_mask(image).mean()) > 0.05  # the two sizes disagree here
    old_row = {"in_brain": 0.9, "head_area": None}
    rows = scan_tools.cam_readings(old_row, image, np.zeros((64, 64), np.float32)).set_index("statistic")
    assert rows.loc["In-head energy", "reference"] == f"head area {100 * at_map:.1f}%"
    stored = scan_tools.cam_readings({"in_brain": 0.9, "head_area": 0.42}, image, None).set_index("statistic")
    assert stored.loc["In-head energy", "reference"] == "head area 42.0%"  # a stored reference wins


def test_report_pdf_of_the_view(store: dict[str, int], full_store: tuple[str, dict[str, int]]) -> None:
    from sslmri_core.evaluation.metrics import patient_decision

    image = np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))
    readings = scan_tools.cam_readings({"deletion_drop": 0.3, "random_drop": 0.05, "in_brain": 0.9}, image, None)
    pdf = scan_tools.report_pdf(
        image=image, cam=np.ones((8, 8), np.float32), pred={"pred_label": "glioma", "confidence": 0.7},
        probs={"glioma": 0.7, "notumor": 0.3},
        decision=patient_decision(np.array([[0.7, 0.3]]), ["glioma", "notumor"]),
        decision_note="mean of 1 slice", model={"Run": "#1"}, stats=readings, cam_source="stored", label="a.png",
        window=(0.0, 255.0), opacity=0.4, colormap="jet", threshold=0.2, method="gradcam")
    assert pdf[:4] == b"%PDF"


def test_scan_explorer_side_by_side_and_filters(store: dict[str, int]) -> None:
    at = open_page("scans", {"run": str(store["scan_ssl"])})
    at.selectbox(key="compare").set_value(store["scan_scratch"]).run()
    assert_no_exception(at)
    text = page_text(at)
    assert f"Run #{store['scan_ssl']}" in text and f"Run #{store['scan_scratch']}" in text
    at.toggle(key="wrong_only").set_value(True).run()
    assert_no_exception(at)
    at.slider(key="max_conf").set_value(0.0).run()
    assert_no_exception(at)
    assert "No scan matches these filters." in page_text(at)


def test_side_by_side_shows_each_model_the_slice_as_it_reads_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                  ) -> None:
    """Two models trained with different --preprocess: each column shows that model's own input."""
    from dashboard_store import add_scan_models

    from sslmri_core.store.writer import RunStore

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    store = RunStore(url)
    ids = add_scan_models(store, tmp_path)
    cropped = store.get_run(ids["scan_scratch"]).config
    store.update_run(ids["scan_scratch"], config={**cropped, "preprocess": "crop"})
    store.engine.dispose()
    monkeypatch.setenv("SSLMRI_DB", url)
    at = open_page("scans", {"run": str(ids["scan_ssl"])}, {"on_demand": False})
    at.selectbox(key="compare").set_value(ids["scan_scratch"]).run()
    assert_no_exception(at)
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    greys = [t["z"] for f in specs if any(t.get("type") == "image" for t in f["data"])
             for t in f["data"] if t.get("type") == "heatmap"]
    assert len(greys) == 2 and greys[0] != greys[1]  # the second model's slice is cropped to its head


def test_scan_explorer_refuses_scans_outside_the_data_folder(
    full_store: tuple[str, dict[str, int]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sslmri_core.store.writer import RunStore

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    store = RunStore(url)
    run = store.start_run("finetune", {"init": "scratch", "mode": "full", "data": str(tmp_path / "data")}, task="tumor")
    store.log_params(run, {"data_root": str(tmp_path / "data"), "classes": '["a", "b"]'})
    store.log_predictions(run, [{"split": "test", "scan": "/etc/passwd", "subject": "s1", "true_label": "a",
                                 "pred_label": "b", "confidence": 0.6, "probs": [0.4, 0.6]}])
    store.end_run(run)
    monkeypatch.setenv("SSLMRI_DB", url)
    at = open_page("scans")
    assert any("not inside a folder the dashboard may read" in w.value for w in at.warning)


def test_embeddings_page_colours_by_choice(store: dict[str, int]) -> None:
    at = open_page("embeddings", {"run": str(store["scan_scratch"])})
    assert at.selectbox(key="embedding").value == (store["scan_scratch"], "umap")
    chart = at.get("plotly_chart")[0]
    assert "sub-00" in chart.proto.spec or "glioma" in chart.proto.spec
    at.radio(key="color_by").set_value("subject").run()
    assert_no_exception(at)


def test_data_page_shows_audit_bad_files_and_thumbnails(store: dict[str, int]) -> None:
    at = open_page("data")
    text = page_text(at)
    assert "Files that could not be used (2)" in text and "truncated" in text
    assert "Can inflate test results" in text and "1 across splits" in text
    assert "exact duplicate group of 2" in "\n".join(e.label for e in at.expander)
    assert at.get("image"), "duplicate thumbnails"


@pytest.mark.postgres
def test_every_page_on_postgresql(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same populated store on PostgreSQL: every page renders its content (skipped without a server, not in CI)."""
    from conftest import fresh_postgres_database, postgres_base_url

    databases = fresh_postgres_database(postgres_base_url())
    url = next(databases)
    try:
        _, ids = populate_full_store(tmp_path, url)
        monkeypatch.setenv("SSLMRI_DB", url)
        assert "Full labels: each arm in the latest experiment per task" in page_text(open_page(None))
        assert len(open_page("ssl").get("plotly_chart")) == 2
        assert len(open_page("confusion", {"run": str(ids["scan_ssl"])}).get("plotly_chart")) == 1
        scans = open_page("scans", {"run": str(ids["scan_ssl"])})
        assert _viewer_spec(scans) and "Stored Grad-CAM statistics" in page_text(scans)
        assert open_page("embeddings").get("plotly_chart")
        assert "Files that could not be used (2)" in page_text(open_page("data"))
    finally:
        next(databases, None)


@pytest.mark.parametrize("page", list(PAGES))
def test_pages_on_an_empty_store_name_the_command(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sslmri_core.store.writer import RunStore

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    store = RunStore(url)
    run = store.start_run("pretrain", {"model": "test_resnet"})  # a store with runs, but nothing for the page
    store.end_run(run)
    monkeypatch.setenv("SSLMRI_DB", url)
    at = open_page(page)
    assert at.info, "an empty state"
    assert any("python cli.py" in c.value for c in at.code), "it names the command that fills the page"


@pytest.mark.parametrize("page", list(PAGES))
def test_pages_on_a_missing_store(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSLMRI_DB", f"sqlite:///{tmp_path / 'none' / 'runs.db'}")
    at = open_page(page)
    assert "does not exist yet" in page_text(at)


# -- upload validation -----------------------------------------------------------------------------
def test_bad_uploads_give_one_clear_message_each(tmp_path: Path) -> None:
    from bad_files import write_corpus

    expected = write_corpus(tmp_path)
    for rel, reason in expected.items():
        path = tmp_path / rel
        if path.is_symlink() or not path.is_file():
            continue
        data = path.read_bytes()
        if reason is None or rel == "stray.png":  # where a file lies in a data folder means nothing to an upload
            if path.suffix.lower() in (".png", ".jpg", ".jpeg") or rel.endswith(".nii.gz"):
                assert scan_tools.read_upload(path.name, data).image.dtype == np.uint8
            else:  # .bmp / .tif decode fine in training but are not upload types
                with pytest.raises(scan_tools.UploadError, match="not a PNG, JPEG, NIfTI"):
                    scan_tools.read_upload(path.name, data)
            continue
        with pytest.raises(scan_tools.UploadError) as err:
            scan_tools.read_upload(path.name, data)
        message = str(err.value)
        assert "\n" not in message and message.startswith(path.name)


def test_upload_size_limit_and_nifti_slices(tmp_path: Path) -> None:
    from bad_files import NIFTI_NAN_SLICES, nifti_with_nans

    with pytest.raises(scan_tools.UploadError, match="20 MB upload limit"):
        scan_tools.read_upload("big.png", b"\x89PNG" + b"\0" * (scan_tools.MAX_UPLOAD_BYTES + 1))
    nifti_with_nans(tmp_path / "vol.nii.gz")
    volume = scan_tools.read_upload("vol.nii.gz", (tmp_path / "vol.nii.gz").read_bytes())
    assert len(volume.slice_indices) == NIFTI_NAN_SLICES and volume.image.shape == (256, 256)
    other = scan_tools.read_upload("vol.nii.gz", (tmp_path / "vol.nii.gz").read_bytes(),
                                   slice_index=volume.slice_indices[0])
    assert not np.array_equal(other.image, volume.image)


def test_upload_on_the_page_predicts_with_a_real_model(store: dict[str, int]) -> None:
    """The upload on the page: a PNG is predicted by the chosen run's checkpoint; a broken file is one message."""
    at = open_page("scans", {"run": str(store["scan_ssl"])})
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(3).random((80, 60)) * 255).astype(np.uint8)).save(buf, "PNG")
    at.file_uploader(key="upload").set_value(("mine.png", buf.getvalue(), "image/png")).run()
    assert_no_exception(at)
    predictions = [m.value for m in at.markdown if m.value.startswith("**Prediction:")]
    assert len(predictions) == 2  # the stored scan's, and the upload's from the real checkpoint
    assert any("class" in frame.value and set(frame.value["class"]) == {"glioma", "meningioma", "notumor", "pituitary"}
               and abs(frame.value["probability"].sum() - 1) < 1e-4 for frame in at.dataframe[1:])
    at.file_uploader(key="upload").set_value(("broken.png", b"this is not an image", "image/png")).run()
    assert_no_exception(at)
    assert any("Cannot use this upload: broken.png: not a PNG image" in plain(e.value) for e in at.error)


def _upload_png(at: AppTest) -> None:
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(5).random((64, 64)) * 255).astype(np.uint8)).save(buf, "PNG")
    at.file_uploader(key="upload").set_value(("mine.png", buf.getvalue(), "image/png")).run()
    assert_no_exception(at)


def test_on_demand_grad_cam_never_writes_the_store(
    full_store: tuple[str, dict[str, int]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model for on-demand Grad-CAM is found through the read-only queries: no writable RunStore, and a
    store file in DELETE journal mode keeps its bytes and its mode (no switch to WAL, no -wal file)."""
    import contextlib
    import hashlib
    import sqlite3

    from sslmri_core.store.engine import sqlite_path
    from sslmri_core.store.writer import RunStore

    url, ids = full_store
    copy = tmp_path / "store" / "runs.db"  # a store of its own: the page's model cache has not seen it
    copy.parent.mkdir()
    with contextlib.closing(sqlite3.connect(f"file:{sqlite_path(url)}?mode=ro", uri=True)) as src, \
            contextlib.closing(sqlite3.connect(copy)) as dst:
        src.backup(dst)
        dst.execute("PRAGMA journal_mode=DELETE")
    before = hashlib.sha256(copy.read_bytes()).hexdigest()

    def no_writable_store(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the dashboard opened a writable RunStore")

    monkeypatch.setattr(RunStore, "__init__", no_writable_store)
    monkeypatch.setenv("SSLMRI_DB", f"sqlite:///{copy}")
    at = open_page("scans", {"run": str(ids["scan_ssl"])})
    _upload_png(at)
    assert not at.warning, [w.value for w in at.warning]
    assert len([m for m in at.markdown if m.value.startswith("**Prediction:")]) == 2  # the upload's: computed now
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in copy.parent.iterdir()) == ["runs.db"]  # no -wal, -shm or -journal file
    with contextlib.closing(sqlite3.connect(f"file:{copy}?mode=ro", uri=True)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


def test_overlay_changes_with_opacity_and_window() -> None:
    image = np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))
    cam = np.zeros((32, 32), np.float32)
    cam[8:24, 8:24] = 1.0
    faint = scan_tools.overlay(image, cam, opacity=0.1, colormap="jet", threshold=0.5)
    strong = scan_tools.overlay(image, cam, opacity=0.9, colormap="jet", threshold=0.5)
    assert faint.shape == (64, 64, 3) and not np.array_equal(faint, strong)
    assert np.array_equal(faint[0, 0], strong[0, 0])  # below the threshold the image shows through
    narrow = scan_tools.overlay(image, None, opacity=0.5, colormap="jet", threshold=0.5, level=128, width=20)
    assert narrow[0, 0, 0] == 0 and narrow[0, -1, 0] == 255


def test_data_page_shows_the_leakage_demonstration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No leakage run: the Data page names the command. With one: its 2x2 as grouped bars with a chance line."""
    import streamlit as st

    from sslmri_core.store.writer import RunStore

    url, ids = populate_full_store(tmp_path)
    monkeypatch.setenv("SSLMRI_DB", url)
    st.cache_data.clear()
    before = open_page("data")
    assert any("python cli.py leakage --data" in c.value for c in before.code)
    assert not any("split by image" in c.proto.spec for c in before.get("plotly_chart"))

    store = RunStore(url)
    run = store.start_run("leakage", {"model": "resnet18"}, task="tumor")
    store.log_params(run, {"dataset": ids["dataset"], "data_root": str(tmp_path / "data" / "tumor")})
    store.log_result(run, "leakage", {"run_id": run, "subject": {"true": 0.61, "shuffled": 0.27},
                                      "image": {"true": 0.93, "shuffled": 0.88}, "chance": 0.25})
    store.end_run(run)
    other = store.start_run("leakage", {"model": "resnet18"}, task="tumor")  # another data set's run: not shown
    store.log_params(other, {"dataset": ids["dataset"] + 100, "data_root": "/elsewhere"})
    store.log_result(other, "leakage", {"subject": {"true": 0.1, "shuffled": 0.1}, "image": {"true": 0.1, "shuffled": 0.1},
                                        "chance": 0.5})
    store.end_run(other)
    st.cache_data.clear()
    at = open_page("data")
    charts = [c.proto.spec for c in at.get("plotly_chart") if "split by image" in c.proto.spec]
    assert len(charts) == 1
    spec = charts[0]
    assert "split by subject" in spec and "shuffled labels" in spec and "true labels" in spec
    assert "chance 0.25" in spec and "0.88" in spec and "0.27" in spec and "chance 0.50" not in spec
    assert f"Run #{run}" in page_text(at) and "Yagis" in page_text(at)


def test_upload_of_a_dicom_file_and_a_zipped_series(store: dict[str, int]) -> None:
    """A .dcm file is one slice; a zip of one series is its slices in position order (not the members' order)."""
    import zipfile

    from dicom_files import dataset, dicom_bytes
    from pydicom.uid import generate_uid

    series = generate_uid()
    rows = {2.0: 24, -1.5: 0, 0.5: 12}  # position -> row of a bright band; members zipped out of position order
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for i, (position, row) in enumerate(rows.items()):
            pixels = np.full((32, 32), 10, np.uint16)
            pixels[row : row + 8] = 900
            archive.writestr(f"IM{i}.dcm", dicom_bytes(dataset(pixels, series=series, position=position)))
    decoded = scan_tools.decode_upload("series.zip", buf.getvalue())
    assert decoded.volume and decoded.slice_label == "Slice (in position order)"
    bands = [int(np.argmax(img.mean(axis=1))) for _, img in decoded.slices]
    assert bands == sorted(bands), bands  # positions -1.5, 0.5, 2.0: the band moves down
    at = open_page("scans", {"run": str(store["scan_ssl"])}, {"on_demand": False})
    at.file_uploader(key="upload").set_value(("series.zip", buf.getvalue(), "application/zip")).run()
    assert_no_exception(at)
    assert at.select_slider[0].options == ["0", "1", "2"] or at.select_slider[0].options == [0, 1, 2]
    single = dicom_bytes(dataset(np.arange(1024, dtype=np.uint16).reshape(32, 32)))
    at.file_uploader(key="upload").set_value(("IM0001.dcm", single, "application/dicom")).run()
    assert_no_exception(at)
    assert any("IM0001.dcm · DICOM" in plain(c) for image in at.get("image") for c in image.captions)
