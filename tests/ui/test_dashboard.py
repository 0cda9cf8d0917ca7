"""The Streamlit pages under AppTest, against a populated, an empty and a missing run store."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from dashboard_store import populate_store

HOME = Path(__file__).resolve().parents[2] / "dashboard" / "Home.py"
RUNS_PAGE = "pages/1_Runs.py"
TIMEOUT_S = 30


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, int]]:
    url = f"sqlite:///{tmp_path_factory.mktemp('dash') / 'runs.db'}"
    return url, populate_store(url)


def plain(markdown: str) -> str:
    """Markdown as a person reads it: the pages escape store and user text (``common.md``), ``\\.`` shows ``.``."""
    return re.sub(r"\\([^\w\s])", r"\1", markdown)


def page_text(at: AppTest) -> str:
    """Everything a person could read on the page, including table cells."""
    parts: list[str] = []
    for kind in ("title", "header", "subheader", "markdown", "caption", "info", "warning", "error", "success"):
        parts += [plain(str(getattr(element, "value", ""))) for element in getattr(at, kind)]
    for kind in ("code", "json"):
        parts += [str(getattr(element, "value", "")) for element in getattr(at, kind)]
    parts += [f"{m.label} {m.value}" for m in at.metric]
    parts += [frame.value.to_string() for frame in at.dataframe]
    parts += [str(box.value) for box in at.selectbox]
    return "\n".join(parts)


def open_home() -> AppTest:
    at = AppTest.from_file(str(HOME), default_timeout=TIMEOUT_S)
    return at.run()


def open_runs(query: dict[str, str] | None = None) -> AppTest:
    at = open_home()
    at.switch_page(RUNS_PAGE)
    at.query_params.update(query or {})
    return at.run()


def assert_no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def test_home_shows_counts_latest_results_and_failures(
    store: tuple[str, dict[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, ids = store
    monkeypatch.setenv("SSLMRI_DB", url)
    at = open_home()
    assert_no_exception(at)
    text = page_text(at)
    assert url in text  # where the store is
    assert {m.label: m.value for m in at.metric}["Runs"] == "5"
    assert "tumor" in text and "ssl-linear" in text and "scratch" in text
    assert "0.853" in text and "0.847" in text and "0.804" in text  # latest ssl and scratch results
    assert "0.700" not in text  # the older ssl run is superseded
    assert [w.value for w in at.warning if f"#{ids['failed']}" in w.value and "boom" in w.value]
    assert at.get("plotly_chart")


def test_runs_page_defaults_to_newest_run(store: tuple[str, dict[str, int]], monkeypatch: pytest.MonkeyPatch) -> None:
    url, ids = store
    monkeypatch.setenv("SSLMRI_DB", url)
    at = open_runs()
    assert_no_exception(at)
    assert at.selectbox(key="selected_run").value == ids["ssl_new"]
    assert f"Run #{ids['ssl_new']} — finetune · tumor" in page_text(at)


def test_runs_page_query_param_selects_pretrain_run(
    store: tuple[str, dict[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, ids = store
    monkeypatch.setenv("SSLMRI_DB", url)
    at = open_runs({"run": str(ids["pretrain"])})
    assert_no_exception(at)
    text = page_text(at)
    assert f"Run #{ids['pretrain']} — pretrain" in text
    assert "temperature" in text and "/runs/1/encoder.pt" in text
    assert "No confusion matrix recorded" in text
    assert len(at.get("plotly_chart")) == 4  # loss/lr/throughput per step, epoch loss
    assert f"Runs started from #{ids['pretrain']}" in text


def test_runs_page_finetune_run_shows_metrics_and_confusion(
    store: tuple[str, dict[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, ids = store
    monkeypatch.setenv("SSLMRI_DB", url)
    at = open_runs({"run": str(ids["scratch"])})
    assert_no_exception(at)
    text = page_text(at)
    assert f"Run #{ids['scratch']} — finetune · tumor" in text
    assert "split_level" in text and "subject" in text and "test_macro_f1" in text and "0.804" in text
    charts = at.get("plotly_chart")
    assert len(charts) == 3  # train loss, validation metrics, confusion matrix
    at.toggle[0].set_value(True).run()  # row-normalised confusion matrix
    assert_no_exception(at)
    at.selectbox(key="selected_run").set_value(ids["ssl_new"]).run()
    assert_no_exception(at)
    assert at.query_params["run"] == str(ids["ssl_new"])
    assert f"Run #{ids['ssl_new']} — finetune" in page_text(at)


def test_runs_page_filters(store: tuple[str, dict[str, int]], monkeypatch: pytest.MonkeyPatch) -> None:
    url, ids = store
    monkeypatch.setenv("SSLMRI_DB", url)
    at = open_runs()
    status_filter = next(box for box in at.sidebar.selectbox if box.label == "Status")
    status_filter.set_value("failed").run()
    assert_no_exception(at)
    assert at.dataframe[0].value["id"].tolist() == [ids["failed"]]
    assert at.selectbox(key="selected_run").value == ids["failed"]
    assert "boom" in "\n".join(e.value for e in at.error)


def test_runs_page_unknown_run_id_is_a_message(
    store: tuple[str, dict[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = store
    monkeypatch.setenv("SSLMRI_DB", url)
    at = open_runs({"run": "999"})
    assert_no_exception(at)
    assert any("There is no run #999" in w.value for w in at.warning)
    assert at.selectbox(key="selected_run").value is None


def test_runs_page_bad_run_param_is_one_plain_message(
    store: tuple[str, dict[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, ids = store
    monkeypatch.setenv("SSLMRI_DB", url)
    at = open_runs({"run": "abc"})
    assert_no_exception(at)
    assert [w.value for w in at.warning] == ["?run= must be a run id (a whole number)"]  # the value is not echoed
    assert at.selectbox(key="selected_run").value == ids["ssl_new"]  # the page's default: the newest run


@pytest.mark.parametrize("page", [None, RUNS_PAGE])
def test_missing_store_shows_cli_commands_and_is_not_created(
    page: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "absent" / "runs.db"
    monkeypatch.setenv("SSLMRI_DB", f"sqlite:///{path}")
    at = open_runs() if page else open_home()
    assert_no_exception(at)
    text = page_text(at)
    assert "does not exist yet" in text
    assert "make demo" in text and "python cli.py pretrain" in text and "python cli.py finetune --from-run ID" in text
    assert not path.exists() and not path.parent.exists()


def test_store_without_runs_shows_empty_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "blank.db"
    sqlite3.connect(path).close()
    monkeypatch.setenv("SSLMRI_DB", str(path))
    at = open_home()
    assert_no_exception(at)
    assert "has no runs yet" in page_text(at) and "make demo" in page_text(at)


def test_home_flags_leakage_prone_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sslmri_core.store.writer import RunStore

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    store = RunStore(url)
    # image-level split; clean; a subject-level split whose run recorded a leakage reason (a leaky given split)
    for task, level, reasons in (("image", "image", "[]"), ("subject", "subject", "[]"),
                                 ("given", "subject", '["given split: 3 subjects in train and test"]')):
        run = store.start_run("finetune", {"init": "scratch", "mode": "full", "label_fraction": 1.0}, task=task)
        store.log_params(run, {"split_level": level, "ssl_pool_test_overlap": 0, "leakage_reasons": reasons})
        store.log_metrics(run, {"test_accuracy": 0.9, "test_balanced_accuracy": 0.9, "test_macro_f1": 0.9})
        store.end_run(run)
    monkeypatch.setenv("SSLMRI_DB", url)
    at = open_home()
    assert_no_exception(at)
    errors = " ".join(e.value for e in at.error)
    assert "2 of the latest results are leakage-prone" in errors
    assert "#1" in errors and "#3" in errors and "#2" not in errors
