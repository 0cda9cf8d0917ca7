"""The read-only query module over a store filled through the real RunStore API."""

from __future__ import annotations

import math
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import delete, insert, select
from sqlalchemy.exc import OperationalError

from sslmri_core import plots
from sslmri_core.store import queries
from sslmri_core.store.engine import read_engine
from sslmri_core.store.schema import Run
from sslmri_core.store.writer import RunStore

from dashboard_store import LABELS, MATRIX, finetune_config, populate_store



@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, int]]:
    url = f"sqlite:///{tmp_path_factory.mktemp('store') / 'runs.db'}"
    return url, populate_store(url)


# -- empty and missing stores -------------------------------------------------------------------
def test_missing_store_reads_as_empty_and_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "runs.db"
    url = f"sqlite:///{path}"
    status = queries.store_status(url)
    assert (status.exists, status.n_runs, status.empty, status.error) == (False, 0, True, None)
    assert queries.runs_frame(url).empty and "test_accuracy" in queries.runs_frame(url).columns
    assert queries.counts_by_kind_status(url).empty
    assert queries.latest_finetune_by_task(url).empty
    assert queries.run_detail(url, 1) is None
    assert queries.metric_series(url, 1).empty
    assert queries.final_metrics(url, 1) == {}
    assert queries.confusion(url, 1) is None
    assert queries.confusion_views(url, 1) == []
    assert queries.predictions_frame(url, 1).empty
    # Through a (cached) engine too: connecting read-only must not create the file either.
    engine = read_engine(url)
    assert queries.runs_frame(engine).empty
    assert not path.exists() and not path.parent.exists()


def test_store_without_schema_reads_as_empty(tmp_path: Path) -> None:
    path = tmp_path / "blank.db"
    sqlite3.connect(path).close()
    status = queries.store_status(f"sqlite:///{path}")
    assert status.exists and status.n_runs == 0 and status.empty
    assert queries.runs_frame(str(path)).empty  # a bare path means a SQLite file
    assert queries.latest_finetune_by_task(str(path)).empty


def test_unreachable_server_is_reported_not_raised() -> None:
    status = queries.store_status("postgresql://user:secret@127.0.0.1:1/runs")
    assert not status.exists and status.error
    assert "secret" not in status.url


# -- read-only ----------------------------------------------------------------------------------
def test_read_engine_refuses_writes(populated: tuple[str, dict[str, int]]) -> None:
    url, _ = populated
    engine = read_engine(url)
    row = {"kind": "pretrain", "status": "running", "created_at": datetime.now(timezone.utc), "config": {}}
    with pytest.raises(OperationalError, match="readonly"):
        with engine.begin() as conn:
            conn.execute(insert(Run).values(**row))
    with pytest.raises(OperationalError, match="readonly"):
        with engine.begin() as conn:
            conn.execute(delete(Run))
    with engine.connect() as conn:
        assert len(conn.execute(select(Run.id)).all()) == 5


# -- runs ---------------------------------------------------------------------------------------
def test_store_status_and_counts(populated: tuple[str, dict[str, int]]) -> None:
    url, _ = populated
    status = queries.store_status(url)
    assert (status.exists, status.n_runs, status.error) == (True, 5, None)
    counts = queries.counts_by_kind_status(url).set_index("kind")
    assert counts.loc["finetune", "finished"] == 3 and counts.loc["finetune", "failed"] == 1
    assert counts.loc["finetune", "total"] == 4 and counts.loc["pretrain", "total"] == 1
    assert counts.loc["pretrain", "running"] == 0


def test_runs_frame(populated: tuple[str, dict[str, int]]) -> None:
    url, ids = populated
    runs = queries.runs_frame(url)
    assert runs["id"].tolist() == sorted(ids.values(), reverse=True)
    by_id = runs.set_index("id")
    ssl = by_id.loc[ids["ssl_new"]]
    assert (ssl["kind"], ssl["task"], ssl["init"], ssl["mode"], ssl["model"]) == (
        "finetune", "tumor", "ssl", "linear", "resnet18")
    assert ssl["label_fraction"] == 1.0 and ssl["parent_run_id"] == ids["pretrain"]
    assert ssl["test_accuracy"] == pytest.approx(0.853) and ssl["test_macro_f1"] == pytest.approx(0.847)
    assert ssl["final_loss"] == pytest.approx(0.6)  # last train_loss
    pretrain = by_id.loc[ids["pretrain"]]
    assert pretrain["final_loss"] == pytest.approx(3.1)  # last epoch_loss beats the noisier step loss
    assert pd.isna(pretrain["test_accuracy"]) and pd.isna(pretrain["init"])
    assert pretrain["duration_s"] >= 0 and str(runs["created_at"].dt.tz) == "UTC"
    failed = by_id.loc[ids["failed"]]
    assert failed["status"] == "failed" and "boom" in failed["error"]


def test_runs_frame_filters(populated: tuple[str, dict[str, int]]) -> None:
    url, ids = populated
    assert queries.runs_frame(url, kind="pretrain")["id"].tolist() == [ids["pretrain"]]
    assert queries.runs_frame(url, status="failed")["id"].tolist() == [ids["failed"]]
    assert set(queries.runs_frame(url, task="tumor")["id"]) == {ids["scratch"], ids["ssl_old"], ids["ssl_new"]}
    assert queries.runs_frame(url, kind="gradcam").empty


def test_run_detail(populated: tuple[str, dict[str, int]]) -> None:
    url, ids = populated
    detail = queries.run_detail(url, ids["scratch"])
    assert detail is not None
    assert detail.run.config == finetune_config("scratch", "full", None)
    assert detail.params["split_level"] == "subject" and detail.params["n_test"] == "24"
    assert queries.params_frame(detail)["key"].tolist()[0] == "classes"
    assert queries.run_detail(url, 999) is None


# -- metrics and evaluation ---------------------------------------------------------------------
def test_metric_series_restores_nan(populated: tuple[str, dict[str, int]]) -> None:
    url, ids = populated
    series = queries.metric_series(url, ids["pretrain"])
    assert list(series.columns) == queries.SERIES_COLUMNS
    loss = series[series["key"] == "loss"]
    assert loss["step"].tolist() == list(range(10))
    assert math.isnan(loss["value"].iloc[3]) and loss["value"].isna().sum() == 1
    assert loss["value"].iloc[4] == pytest.approx(3.8)
    only_lr = queries.metric_series(url, ids["pretrain"], keys=["lr"])
    assert set(only_lr["key"]) == {"lr"} and len(only_lr) == 10
    epoch_loss = series[series["key"] == "epoch_loss"]
    assert epoch_loss["step"].isna().all() and epoch_loss["epoch"].tolist() == [0, 1]


def test_final_metrics(populated: tuple[str, dict[str, int]]) -> None:
    url, ids = populated
    finals = queries.final_metrics(url, ids["ssl_new"])
    assert finals["test_accuracy"] == pytest.approx(0.853)
    assert finals["val_accuracy"] == pytest.approx(0.7)  # the final value, not the last epoch's
    assert math.isnan(finals["test_ece"])
    assert queries.final_metrics(url, 999) == {}
    frame = queries.final_metrics_frame(url, ids["ssl_new"])
    assert list(frame.columns) == ["metric", "value"] and "test_macro_f1" in set(frame["metric"])


def test_confusion_round_trips(populated: tuple[str, dict[str, int]]) -> None:
    url, ids = populated
    cm = queries.confusion(url, ids["scratch"])
    assert cm is not None and (cm.split, cm.level) == ("test", "slice")
    assert cm.labels == LABELS and cm.matrix == MATRIX
    assert cm.counts().loc["meningioma", "notumor"] == 2
    normalised = cm.normalised()
    np.testing.assert_allclose(normalised.sum(axis=1), 1.0)
    assert normalised.loc["meningioma", "meningioma"] == pytest.approx(4 / 6)
    assert queries.confusion(url, ids["scratch"], split="val").matrix[2] == [0, 1, 1, 0]
    assert queries.confusion(url, ids["scratch"], level="subject") is None
    assert queries.confusion(url, ids["pretrain"]) is None
    assert queries.confusion_views(url, ids["scratch"]) == [("test", "slice"), ("val", "slice")]


def test_empty_confusion_row_normalises_to_zero() -> None:
    cm = queries.ConfusionMatrix("test", "slice", ["a", "b"], [[0, 0], [1, 3]])
    assert cm.normalised().loc["a"].tolist() == [0.0, 0.0]


def test_predictions_frame(populated: tuple[str, dict[str, int]]) -> None:
    url, ids = populated
    preds = queries.predictions_frame(url, ids["scratch"], split="test")
    assert len(preds) == 8 and preds["confidence"].is_monotonic_increasing
    assert preds["correct"].sum() == 4  # the i == 0 row of each label predicts that label
    assert queries.predictions_frame(url, ids["scratch"], split="val").empty


def test_latest_finetune_by_task(populated: tuple[str, dict[str, int]]) -> None:
    url, ids = populated
    latest = queries.latest_finetune_by_task(url)
    assert list(latest.columns) == queries.LATEST_COLUMNS
    assert latest["task"].tolist() == ["tumor", "tumor"]  # the failed alzheimer run is left out
    by_arm = latest.set_index("arm")
    assert by_arm.loc["ssl · linear", "run_id"] == ids["ssl_new"]  # newer beats older
    assert by_arm.loc["ssl · linear", "test_accuracy"] == pytest.approx(0.853)
    assert by_arm.loc["scratch · full", "run_id"] == ids["scratch"]
    assert by_arm.loc["scratch · full", "test_macro_f1"] == pytest.approx(0.804)


# -- figures ------------------------------------------------------------------------------------
def test_curve_groups_and_figures(populated: tuple[str, dict[str, int]]) -> None:
    url, ids = populated
    groups = plots.curve_groups(queries.metric_series(url, ids["pretrain"]))
    assert groups == {"Loss per step": ["loss"], "Learning rate per step": ["lr"],
                      "Throughput per step": ["images_per_s"], "Loss per epoch": ["epoch_loss"]}
    series = queries.metric_series(url, ids["scratch"])
    groups = plots.curve_groups(series)
    assert groups == {"Loss per epoch": ["train_loss"],
                      "Validation per epoch": ["val_accuracy", "val_balanced_accuracy", "val_macro_f1"]}
    fig = plots.curves_figure(series, groups["Validation per epoch"])
    assert len(fig.data) == 3 and list(fig.data[0].x) == [0, 1, 2]  # the final value is no epoch
    cm = queries.confusion(url, ids["scratch"])
    assert cm is not None
    heat = plots.confusion_figure(cm, normalise=True)
    assert heat.data[0].z[1][1] == pytest.approx(4 / 6)
    assert plots.confusion_figure(cm).data[0].z[0][0] == 5
    bars = plots.latest_results_figure(queries.latest_finetune_by_task(url))
    assert {trace.name for trace in bars.data} == {"scratch · full @ 100% labels", "ssl · linear @ 100% labels"}


# -- experiments: statistics per experiment, never pooled ---------------------------------------------
def _experiment_store(tmp_path: Path, **experiments: dict) -> tuple[str, dict[str, int]]:
    """A store with named experiments (keyword arguments of ``dashboard_store.add_experiment``)."""
    from dashboard_store import add_experiment

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    store = RunStore(url)
    ids = {name: add_experiment(store, **kwargs) for name, kwargs in experiments.items()}
    store.engine.dispose()
    return url, ids


def _constant(value: float):  # type: ignore[no-untyped-def]
    return lambda arm, fraction, seed: value


def test_experiment_predictions_is_the_frame_stats_takes(tmp_path: Path) -> None:
    from dashboard_store import TEST_SUBJECTS_PER_CLASS

    from sslmri_core.evaluation import stats

    url, ids = _experiment_store(tmp_path, exp={"arms": ("ssl-full", "scratch"), "fractions": (1.0,), "seeds": (0, 1)})
    frame = queries.experiment_predictions(url, ids["exp"])
    assert list(frame.columns) == queries.EXPERIMENT_FRAME_COLUMNS and set(stats.FRAME_COLUMNS) <= set(frame.columns)
    assert frame.attrs["classes"] == LABELS
    assert len(frame) == 2 * 2 * len(LABELS) * TEST_SUBJECTS_PER_CLASS * 2  # arms x seeds x subjects x slices
    assert frame["fold"].isna().all() and (frame["steps"] == 600).all() and not frame["leakage_prone"].any()
    assert set(frame["seed"]) == {0, 1} and set(frame["arm"]) == {"ssl-full", "scratch"}
    assert queries.experiment_predictions(url, 999).empty


def test_two_experiments_of_one_task_are_never_averaged(tmp_path: Path) -> None:
    url, ids = _experiment_store(tmp_path, old={"score": _constant(0.8), "seeds": (0, 1)},
                                 new={"score": _constant(0.3), "seeds": (0, 1)})
    results = queries.finetune_results(url)
    assert queries.task_experiments(results, "tumor") == [ids["new"], ids["old"]]
    for name, value in (("old", 0.8), ("new", 0.3)):
        curves = queries.experiment_statistics(url, ids[name]).curves
        assert (curves["experiment_id"] == ids[name]).all()
        assert curves["mean"].tolist() == pytest.approx([value] * len(curves))  # pooled would be 0.55
        assert (curves["n_seeds"] == 2).all()  # not 4: the other experiment's seeds are not "more seeds"


def test_leakage_prone_children_are_left_out_unless_asked_for(tmp_path: Path) -> None:
    url, ids = _experiment_store(tmp_path, exp={"arms": ("ssl-full", "scratch"), "fractions": (1.0,),
                                                "seeds": (0,), "leaky_arms": ("ssl-full",)})
    hidden = queries.experiment_statistics(url, ids["exp"])
    assert set(hidden.curves["arm"]) == {"scratch"} and hidden.paired.empty and len(hidden.leaky_runs) == 1
    shown = queries.experiment_statistics(url, ids["exp"], include_leaky=True)
    flagged = shown.curves.groupby("arm")["leakage_prone"].agg(["all", "any"])
    assert flagged.loc["ssl-full", "all"] and not flagged.loc["scratch", "any"]
    assert shown.paired["leakage_prone"].all()
    runs = queries.finetune_results(url).set_index("arm")["leakage_prone"]
    assert runs["ssl-full"].all() and not runs["scratch"].any()  # from leakage_reasons alone: split and overlap are clean


def test_leakage_reasons_mark_a_run_leakage_prone(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    store = RunStore(url)
    expected = {}
    for reasons, leaky in (('["a given split shares 3 subjects"]', True), ("[]", False), (None, False)):
        run = store.start_run("finetune", {"init": "scratch", "mode": "full"}, task="t")
        store.log_params(run, {"split_level": "subject", "ssl_pool_test_overlap": 0,
                               **({"leakage_reasons": reasons} if reasons is not None else {})})
        store.end_run(run)
        expected[run] = leaky
    frame = queries.runs_frame(url).set_index("id")["leakage_prone"]
    assert {int(k): bool(v) for k, v in frame.items()} == expected


def test_the_headline_is_full_labels_never_the_best_fraction(tmp_path: Path) -> None:
    best_at_half = {0.1: 0.4, 0.5: 0.9, 1.0: 0.6}
    url, ids = _experiment_store(
        tmp_path, exp={"score": lambda arm, fraction, seed: best_at_half[fraction], "seeds": (0,)},
        partial={"task": "alzheimer", "fractions": (0.1, 0.5), "score": lambda arm, fraction, seed: 0.3 + fraction,
                 "seeds": (0,)})
    headline = queries.full_label_results(url).set_index(["task", "arm"])
    tumor = headline.loc["tumor"]
    assert (tumor["fraction"] == 1.0).all() and tumor["mean"].tolist() == pytest.approx([0.6] * 3)
    alzheimer = headline.loc["alzheimer"]  # no 100% in its grid: the largest fraction configured
    assert (alzheimer["fraction"] == 0.5).all() and alzheimer["mean"].tolist() == pytest.approx([0.8] * 3)


def test_the_cli_summary_and_the_dashboard_share_one_computation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sslmri_core.config import ExperimentConfig
    from sslmri_core.evaluation.experiment import print_summary, summarise

    url, ids = _experiment_store(tmp_path, exp={"seeds": (0, 1)})
    result = summarise(RunStore(url), ids["exp"])
    dashboard = queries.experiment_statistics(url, ids["exp"])
    ours = {(r["arm"], r["fraction"], r["metric"]): (r["mean"], r["ci"]) for r in result.summary}
    theirs = {(r.arm, r.fraction, r.metric): (r.mean, [r.lo, r.hi]) for r in dashboard.curves.itertuples()}
    assert ours == theirs and len(ours) == 3 * 3 * 3
    assert {(p["arm"], p["baseline"], p["fraction"], p["metric"]) for p in result.paired} == {
        (r.arm, r.baseline, r.fraction, r.metric) for r in dashboard.paired.itertuples()}
    payload = result.to_json()
    assert "pretraining" in payload and "one draw" not in payload["interval"] and payload["summary"] == result.summary
    assert {"n_test_subjects", "steps", "ci", "n_seeds"} <= set(payload["summary"][0])
    assert {"n_test_subjects", "ci", "wins"} <= set(payload["paired"][0])
    print_summary(result, ExperimentConfig(task="tumor"))
    printed = capsys.readouterr().err
    assert "test subjects" in printed and "0.700 [0.550, 0.825]" in printed  # ssl-linear at 100%: mean [lo, hi]
    assert "paired difference" in printed and "+0.100 [+0.024, +0.200]" in printed and "pretraining" in printed
    assert "…" not in printed  # nothing cut off on an 80-column terminal


def test_store_text_in_figures_is_never_html() -> None:
    """Plotly renders ``<a href>`` in labels: class names and tasks from the store are escaped."""
    evil = '<a href="https://evil.example">re-login</a>'
    cm = queries.ConfusionMatrix(split="test", level="slice", labels=[evil, "b"], matrix=[[1, 0], [0, 1]])
    fig = plots.confusion_figure(cm)
    shown = [*fig.data[0].x, *fig.data[0].y, fig.layout.title.text]
    assert all("<a " not in str(s) for s in shown) and "&lt;a href" in fig.data[0].x[0]
    balance = plots.class_balance_figure({evil: 3})
    assert "<a " not in balance.data[0].x[0]


def test_the_leakage_demonstrations_runs_are_not_listed_as_results(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    store = RunStore(url)
    demo = store.start_run("leakage", {}, task="tumor")
    ids = {}
    for name, parent in (("demo child", demo), ("single run", None)):
        ids[name] = store.start_run("finetune", {"init": "scratch", "mode": "full"}, task="tumor",
                                    parent_run_id=parent)
        store.end_run(ids[name])
    store.end_run(demo)
    assert queries.finetune_results(url)["run_id"].tolist() == [ids["single run"]]
