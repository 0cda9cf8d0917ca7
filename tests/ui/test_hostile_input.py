"""Hostile input on the dashboard: ``?run=`` values that are not run ids, markdown in store and user text,
and uploads decoded once (not on every rerun).

The store test fills every text field a page shows (task, run error, class names, subjects, scan paths,
data-set roots, audit findings, leakage reasons, an upload's name) with a markdown link and bold text,
opens every page with AppTest and reads the raw markdown each element hands to Streamlit: the link
must arrive escaped (or inside inline code, or in a non-markdown element such as a table).
"""

from __future__ import annotations

import io
import json
import re
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dashboard_store import populate_full_store
from PIL import Image
from streamlit.testing.v1 import AppTest
from test_dashboard import assert_no_exception

ROOT = Path(__file__).resolve().parents[2]
HOME = ROOT / "dashboard" / "Home.py"
PAGES = ["pages/1_Runs.py", "pages/2_SSL_vs_Supervised.py", "pages/3_Confusion.py", "pages/4_Scan_Explorer.py",
         "pages/5_Embeddings.py", "pages/6_Data.py"]
TIMEOUT_S = 60
sys.path.insert(0, str(ROOT / "dashboard"))
import common  # noqa: E402  (the dashboard's shared helpers)
import scan_tools  # noqa: E402

RUN_PARAM_HELP = "?run= must be a run id (a whole number)"
EVIL = "[re-login](https://evil.example) **bold**"
EVIL_PATH = "[re-login](evil.example) **bold**"  # the same, usable as a file or folder name (no "//")
NEEDLES = ("](https://evil.example)", "](evil.example)", "**bold**")
CLASSES = [f"glioma {EVIL}", "notumor"]


# -- ?run= ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw", ["²", "\u0661", "0", "-1", "+1", " 1", "1 ", "1\n", "1.0", "1e3", "0x1", "abc",
                                 "9" * 19, str(2**63), "1" * 200, f"1{EVIL}", EVIL])
def test_parse_run_id_refuses_anything_but_ascii_digits_in_range(raw: str) -> None:
    assert common.parse_run_id(raw) is None


@pytest.mark.parametrize(("raw", "expected"), [("1", 1), ("007", 7), ("42", 42), ("9" * 18, 10**18 - 1)])
def test_parse_run_id_takes_run_ids(raw: str, expected: int) -> None:
    assert common.parse_run_id(raw) == expected


@pytest.fixture(scope="module")
def full_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, int], Path]:
    root = tmp_path_factory.mktemp("dash-hostile-full")
    url, ids = populate_full_store(root)
    return url, ids, root


@pytest.fixture
def store(full_store: tuple[str, dict[str, int], Path], monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    url, ids, root = full_store
    monkeypatch.setenv("SSLMRI_DB", url)
    monkeypatch.setenv("SSLMRI_DATA_ROOTS", str(root))
    monkeypatch.setenv("SSLMRI_RUNS_ROOTS", str(root))
    return ids


def open_page(page: str | None, query: dict[str, str] | None = None, state: dict[str, Any] | None = None) -> AppTest:
    at = AppTest.from_file(str(HOME), default_timeout=TIMEOUT_S)
    for key, value in (state or {}).items():
        at.session_state[key] = value
    at.run()
    if page:
        at.switch_page(page)
        at.query_params.update(query or {})
        at.run()
    return at


@pytest.mark.parametrize("raw", ["²", "\u0661", "0", "abc", "9" * 19, EVIL])
@pytest.mark.parametrize("page", ["pages/1_Runs.py", "pages/3_Confusion.py", "pages/4_Scan_Explorer.py",
                                  "pages/5_Embeddings.py"])
def test_a_bad_run_param_is_one_message_and_the_page_shows_its_default(
    page: str, raw: str, store: dict[str, int]
) -> None:
    at = open_page(page, {"run": raw})
    assert_no_exception(at)
    assert [w.value for w in at.warning if RUN_PARAM_HELP in w.value] == [RUN_PARAM_HELP]
    assert not [w for w in at.warning if raw in w.value], "the bad value is not echoed"
    default = open_page(page)
    assert_no_exception(default)
    key = {"pages/1_Runs.py": "selected_run", "pages/3_Confusion.py": "run_a", "pages/4_Scan_Explorer.py": "model",
           "pages/5_Embeddings.py": "embedding"}[page]
    assert at.selectbox(key=key).value == default.selectbox(key=key).value is not None
    assert len(at.get("plotly_chart")) == len(default.get("plotly_chart"))


def test_a_good_run_param_still_selects_the_run(store: dict[str, int]) -> None:
    for page, key, want in (("pages/1_Runs.py", "selected_run", store["scan_scratch"]),
                            ("pages/3_Confusion.py", "run_a", store["scan_scratch"]),
                            ("pages/4_Scan_Explorer.py", "model", store["scan_scratch"]),
                            ("pages/5_Embeddings.py", "embedding", (store["scan_scratch"], "umap"))):
        at = open_page(page, {"run": f"00{store['scan_scratch']}"})
        assert_no_exception(at)
        assert at.selectbox(key=key).value == want, page
        assert not [w for w in at.warning if RUN_PARAM_HELP in w.value]


# -- markdown injection ----------------------------------------------------------------------------------
def hostile_store(root: Path) -> tuple[str, dict[str, int]]:
    """Every field a page renders as text holds a markdown link and bold text."""
    from sqlalchemy.orm import Session

    from sslmri_core.store.schema import Dataset, ManifestEntry
    from sslmri_core.store.writer import RunStore

    url = f"sqlite:///{root / 'runs.db'}"
    store = RunStore(url)
    ids: dict[str, int] = {}
    data = root / "data" / EVIL_PATH  # a real folder named like the link
    scans = []
    for c, label in enumerate(CLASSES):
        for s in range(2):
            path = data / f"{label.replace('/', '_')}" / f"{EVIL_PATH} {s}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((np.random.default_rng(c * 10 + s).random((32, 32)) * 255).astype(np.uint8)).save(path)
            scans.append((str(path), label, f"subject {EVIL} {c}{s}"))

    ids["failed"] = store.start_run("finetune", {"task": EVIL, "init": "scratch"}, task=EVIL)
    with pytest.raises(RuntimeError), store.track(ids["failed"]):
        raise RuntimeError(f"boom {EVIL}")

    exp = store.start_run("experiment", {"task": EVIL, "fractions": [1.0], "seeds": 1, "bootstrap": 50}, task=EVIL)
    ids["experiment"] = exp
    for arm in ("ssl-linear", "scratch"):
        init, mode = ("ssl", "linear") if arm == "ssl-linear" else ("scratch", "full")
        run = store.start_run("finetune", {"task": EVIL, "init": init, "mode": mode, "label_fraction": 1.0, "seed": 0,
                                           "model": "test_resnet"}, task=EVIL, parent_run_id=exp)
        store.log_params(run, {"arm": arm, "fraction": 1.0, "seed": 0, "split_level": "subject",
                               "ssl_pool_test_overlap": 0, "classes": json.dumps(CLASSES),
                               "leakage_reasons": json.dumps([f"reason {EVIL}"] if arm == "scratch" else [])})
        store.log_metrics(run, {"test_balanced_accuracy": 0.5, "test_accuracy": 0.5, "test_macro_f1": 0.5})
        store.log_predictions(run, [{"split": "test", "scan": path, "subject": subject, "true_label": label,
                                     "pred_label": CLASSES[(i + 1) % 2], "confidence": 0.6, "probs": [0.4, 0.6]}
                                    for i, (path, label, subject) in enumerate(scans)])
        store.end_run(run)
    store.end_run(exp)

    run = store.start_run("finetune", {"task": EVIL, "init": "scratch", "mode": "full", "label_fraction": 1.0,
                                       "seed": 0, "model": "test_resnet", "data": str(data)}, task=EVIL)
    ids["model"] = run
    store.update_run(run, out_dir=str(root / "runs" / f"run-{run}"))
    store.log_params(run, {"data_root": str(data), "classes": json.dumps(CLASSES), "split_level": "subject"})
    store.log_metrics(run, {"test_balanced_accuracy": 0.5, "test_accuracy": 0.5, "test_macro_f1": 0.5})
    store.log_predictions(run, [{"split": "test", "scan": path, "subject": subject, "true_label": label,
                                 "pred_label": CLASSES[(i + 1) % 2], "confidence": 0.6, "probs": [0.4, 0.6]}
                                for i, (path, label, subject) in enumerate(scans)]
                          + [{"split": "test", "scan": f"/nowhere/{EVIL}.png", "subject": f"subject {EVIL} 99",
                              "true_label": CLASSES[0], "pred_label": CLASSES[0], "confidence": 0.9,
                              "probs": [0.9, 0.1]}])
    store.log_confusion(run, "test", "slice", CLASSES, [[1, 1], [1, 1]])
    store.log_embeddings(run, "umap", [{"scan": path, "subject": subject, "label": label, "split": "test",
                                        "source": EVIL, "x": float(i), "y": float(i % 2)}
                                       for i, (path, label, subject) in enumerate(scans)])
    store.end_run(run)
    cam = store.start_run("gradcam", {"run": run, "method": "gradcam"}, task=EVIL, parent_run_id=run)
    store.update_run(cam, out_dir=str(root / "runs" / f"run-{cam}"))
    store.log_cam_stats(cam, [{"model_run_id": run, "checkpoint": None, "method": "gradcam", "split": "test",
                               "scan": path, "subject": subject, "true_label": label, "target_label": label,
                               "pred_label": label, "confidence": 0.6, "intensity": 0.2, "area_pct": 10.0,
                               "threshold": 0.5, "in_brain": 0.9, "raw_max": 1.0, "raw_mean": 0.1,
                               "deletion_drop": 0.1, "random_drop": 0.0, "road": None, "pointing_hit": True,
                               "lesion_energy": 0.5, "heatmap_path": f"heatmaps/{EVIL_PATH}.png"}
                              for path, label, subject in scans])
    store.end_run(cam)

    keys = [f"{EVIL}/{CLASSES[0]}/{EVIL_PATH} {i}.png" for i in range(2)]
    with Session(store.engine) as session, session.begin():
        ds = Dataset(fingerprint="e" * 64, root=EVIL, created_at=datetime.now(timezone.utc), n_files=5, n_usable=4,
                     n_images=4,
                     classes={label: 2 for label in CLASSES}, subject_pattern=EVIL, split_level="image",
                     summary={"files": 5, "usable": 4, "images": 4,
                              "unusable": [{"path": f"{EVIL}/x.png", "reason": f"truncated {EVIL}"}]})
        session.add(ds)
        session.flush()
        ids["dataset"] = int(ds.id)
        session.add(ManifestEntry(dataset_id=ids["dataset"], key=f"{EVIL}/x.png", path=f"{EVIL}/x.png",
                                  rel_path=EVIL_PATH, label=CLASSES[0], folder_label=CLASSES[0], status="unusable",
                                  reason=f"truncated {EVIL}"))
    group = {"hash": "cd" * 8, "size": EVIL, "keys": keys, "labels": CLASSES, "splits": [EVIL, "test"],
             "subjects": [EVIL, EVIL], "cross_class": True, "cross_split": True, "cross_subject": False}
    summary = {"files": 5, "images": 4, "unusable": 1, "duplicate_groups": 1, "cross_class_duplicates": EVIL,
               "cross_split_duplicates": 1, "near_duplicate_groups": 0, "subject_leaks": 1,
               "subjects_spanning_classes": 0,
               "confound": {"flag": True, "intensity_flag": True, "reason": f"metadata predicts {EVIL}"},
               "slices_per_subject": {"min": 1, "max": 1, "subjects_per_class": {EVIL: 1}}}
    store.save_audit(ids["dataset"], summary, {**summary, "details": {
        "duplicate_groups": [group], "near_duplicate_groups": [],
        "subject_leaks": [{"subject": EVIL, "splits": ["train", "test"], "images": 2}]}})
    store.engine.dispose()
    return url, ids


def _strip_code_spans(text: str) -> str:
    """Markdown without its inline code (``x``, ```` `` `a` `` ````): nothing inside a code span is a link."""
    return re.sub(r"(?<!`)(`+)(?!`).*?(?<!`)\1(?!`)", "", text, flags=re.S)


def markdown_texts(at: AppTest) -> Iterator[tuple[str, str]]:
    """``(where, raw markdown)`` of every element that Streamlit renders as markdown."""
    markdown_types = {"markdown", "caption", "title", "header", "subheader", "divider", "latex", "error", "warning",
                      "info", "success", "toast"}

    def walk(node: Any) -> Iterator[Any]:
        yield node
        for child in getattr(node, "children", {}).values():
            yield from walk(child)

    for node in walk(at._tree):
        proto, kind = getattr(node, "proto", None), getattr(node, "type", "")
        if proto is None:
            continue
        if kind in markdown_types:
            yield kind, proto.body
        elif kind == "metric":
            yield "metric value", proto.body
        elif kind == "image":
            yield "image caption", " ".join(img.caption for img in proto.imgs)
        for field in ("label", "help", "placeholder"):  # widget, expander, metric and page-link labels, tooltips
            value = getattr(proto, field, None)
            if isinstance(value, str) and value:
                yield f"{kind} {field}", value


def live_links(at: AppTest) -> list[str]:
    found = []
    for where, text in markdown_texts(at):
        plain = _strip_code_spans(text)
        if any(needle in plain for needle in NEEDLES):
            found.append(f"{where}: {text!r}")
    return found


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, int], Path]:
    root = tmp_path_factory.mktemp("dash-hostile")
    url, ids = hostile_store(root)
    return url, ids, root


@pytest.fixture
def hostile_env(hostile: tuple[str, dict[str, int], Path], monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    import streamlit as st

    url, ids, root = hostile
    monkeypatch.setenv("SSLMRI_DB", url)
    monkeypatch.setenv("SSLMRI_DATA_ROOTS", str(root))
    monkeypatch.setenv("SSLMRI_RUNS_ROOTS", str(root))
    st.cache_data.clear()
    return ids


def _visits(ids: dict[str, int]) -> list[tuple[str | None, dict[str, str], dict[str, Any]]]:
    model = {"run": str(ids["model"])}
    return [(None, {}, {}),
            ("pages/1_Runs.py", {}, {}), ("pages/1_Runs.py", {"run": str(ids["failed"])}, {}),
            ("pages/1_Runs.py", model, {}),
            ("pages/2_SSL_vs_Supervised.py", {}, {}), ("pages/2_SSL_vs_Supervised.py", {}, {"show_leaky": True}),
            ("pages/3_Confusion.py", model, {}),
            ("pages/4_Scan_Explorer.py", model, {"on_demand": False}),
            ("pages/5_Embeddings.py", model, {}),
            ("pages/6_Data.py", {}, {})]


def test_store_text_is_never_live_markdown_on_any_page(hostile_env: dict[str, int]) -> None:
    visits = _visits(hostile_env)
    assert {page for page, _, _ in visits if page} == set(PAGES) == {
        f"pages/{p.name}" for p in (ROOT / "dashboard" / "pages").glob("*.py")}, "every page is opened"
    seen, live = 0, []
    for page, query, state in visits:
        at = open_page(page, query, state)
        assert_no_exception(at)
        seen += sum("re\\-login" in text for _, text in markdown_texts(at))
        live += [f"{page or 'Home'} {query}: {found}" for found in live_links(at)]
    assert not live, "\n".join(live)
    assert seen >= 10, "the hostile text reached the pages (escaped)"


def test_scan_explorer_subjects_and_unreadable_scans_are_plain_text(hostile_env: dict[str, int]) -> None:
    at = open_page("pages/4_Scan_Explorer.py", {"run": str(hostile_env["model"])}, {"on_demand": False})
    subjects = at.selectbox(key="subject").options
    for subject in subjects:
        at.selectbox(key="subject").set_value(next(s for s in at.selectbox(key="subject").options if s == subject))
        at.run()
        assert_no_exception(at)
        assert not live_links(at), live_links(at)


def test_an_uploads_name_is_plain_text(hostile_env: dict[str, int]) -> None:
    at = open_page("pages/4_Scan_Explorer.py", {"run": str(hostile_env["model"])}, {"on_demand": False})
    at.file_uploader(key="upload").set_value((f"{EVIL_PATH}.png", b"not an image", "image/png")).run()
    assert_no_exception(at)
    assert any("Cannot use this upload" in e.value for e in at.error)
    assert not live_links(at), live_links(at)
    buf = io.BytesIO()
    Image.fromarray(np.full((40, 40), 90, np.uint8)).save(buf, "PNG")
    at.file_uploader(key="upload").set_value((f"{EVIL_PATH}.png", buf.getvalue(), "image/png")).run()
    assert_no_exception(at)
    assert at.get("imgs") or at.get("image")
    assert not live_links(at), live_links(at)


def test_markdown_escaping_keeps_the_text() -> None:
    escaped = common.md(EVIL + " a_b #1 <b> $x$ :red[y] `z` \\ ~ | !")
    assert not any(needle in escaped for needle in NEEDLES)
    assert re.sub(r"\\(.)", r"\1", escaped) == EVIL + " a_b #1 <b> $x$ :red[y] `z` \\ ~ | !"
    for text in ("a`b", "``", "`x`", "plain"):
        span = common.code(text)
        fence = re.match(r"`+", span).group(0)  # type: ignore[union-attr]
        assert span.endswith(fence) and fence not in span[len(fence):-len(fence)]
        assert span[len(fence):-len(fence)].strip(" ") == text.strip(" ")


# -- uploads decoded once ---------------------------------------------------------------------------------
def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((48, 40), value, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_cached_upload_decodes_each_file_once(tmp_path: Path) -> None:
    from bad_files import nifti_with_nans

    calls: list[str] = []

    def counting(name: str, data: bytes, size: int) -> scan_tools.Upload:
        calls.append(name)
        return scan_tools.decode_upload(name, data, size)

    state: dict[str, Any] = {}
    first = scan_tools.cached_upload(state, "a.png", _png(10), decode=counting)
    assert scan_tools.cached_upload(state, "a.png", _png(10), decode=counting) is first  # a rerun: same bytes
    assert len(calls) == 1
    other = scan_tools.cached_upload(state, "a.png", _png(200), decode=counting)  # another file
    assert len(calls) == 2 and not np.array_equal(other.slice().image, first.slice().image)
    assert scan_tools.cached_upload(state, "a.png", _png(10), decode=counting) is not first  # the old one was dropped
    assert len(calls) == 3 and len(state) == 1
    scan_tools.cached_upload(state, "a.png", _png(10), size=128, decode=counting)  # another size: decoded for it
    assert len(calls) == 4

    nifti_with_nans(tmp_path / "vol.nii.gz")
    data = (tmp_path / "vol.nii.gz").read_bytes()
    volume = scan_tools.cached_upload(state, "vol.nii.gz", data, decode=counting)
    middle = volume.slice()
    for z in middle.slice_indices:  # the slice slider, the opacity, the window: nothing decoded again
        again = scan_tools.cached_upload(state, "vol.nii.gz", data, decode=counting)
        assert again is volume and again.slice(z).note.startswith(f"axial slice {z} of")
    assert len(calls) == 5 and len(state) == 1
    assert np.array_equal(volume.slice(middle.slice_indices[0]).image,
                          scan_tools.read_upload("vol.nii.gz", data, slice_index=middle.slice_indices[0]).image)

    with pytest.raises(scan_tools.UploadError, match=r"broken\.png"):
        scan_tools.cached_upload(state, "broken.png", b"not an image", decode=counting)
    with pytest.raises(scan_tools.UploadError, match=r"broken\.png"):  # a bad file is not decoded again either
        scan_tools.cached_upload(state, "broken.png", b"not an image", decode=counting)
    assert len(calls) == 6 and len(state) == 1
    scan_tools.forget_upload(state)
    assert not state


def test_scan_explorer_decodes_an_upload_once(store: dict[str, int], tmp_path: Path) -> None:
    """On the page: moving the opacity slider or the slice slider reuses the decoded upload; a new file replaces it."""
    from bad_files import nifti_with_nans

    at = open_page("pages/4_Scan_Explorer.py", {"run": str(store["scan_ssl"])})
    at.file_uploader(key="upload").set_value(("mine.png", _png(60), "image/png")).run()
    assert_no_exception(at)
    cached = at.session_state[scan_tools.UPLOAD_STATE_KEY]["upload"]
    assert isinstance(cached, scan_tools.Upload)
    at.slider(key="opacity").set_value(0.8).run()
    assert_no_exception(at)
    assert at.session_state[scan_tools.UPLOAD_STATE_KEY]["upload"] is cached  # nothing decoded again
    nifti_with_nans(tmp_path / "vol.nii.gz")
    at.file_uploader(key="upload").set_value(("vol.nii.gz", (tmp_path / "vol.nii.gz").read_bytes(),
                                              "application/gzip")).run()
    assert_no_exception(at)
    volume = at.session_state[scan_tools.UPLOAD_STATE_KEY]["upload"]
    assert volume is not cached and volume.volume
    slider = at.select_slider[0]
    slider.set_value(slider.options[0]).run()
    assert_no_exception(at)
    assert at.session_state[scan_tools.UPLOAD_STATE_KEY]["upload"] is volume
    assert any(f"axial slice {slider.options[0]} of" in c for image in at.get("image") for c in image.captions)
