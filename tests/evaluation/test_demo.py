"""The main job (`make demo`): the audit, an SSL-vs-supervised experiment, the leakage demonstration,
Grad-CAM of one fine-tuned model and a UMAP of the SSL encoder, all on the built-in data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import sslmri_core.data.builtin as builtin
from sslmri_core.config import BUILTIN_SETS, SSL_ARMS, TASKS, DemoConfig, SynthConfig
from sslmri_core.evaluation.demo import DEMO_ARMS, run_demo
from sslmri_core.store.writer import RunStore

ROOT = Path(__file__).resolve().parents[2]


def test_the_builtin_pool_is_larger_than_the_labelled_set_and_small_fractions_are_few_labels() -> None:
    """The SSL question needs more unlabeled than labelled images, and few labels at the demo's smallest fraction."""
    def images(cfg: SynthConfig) -> int:
        tasks = TASKS if cfg.task == "all" else {cfg.task: TASKS[cfg.task]}
        return sum(len(c) for c in tasks.values()) * cfg.subjects * cfg.slices_per_subject

    assert images(BUILTIN_SETS["pretrain"]) > images(BUILTIN_SETS["labeled"])
    demo = DemoConfig()
    train_subjects = 0.7 * BUILTIN_SETS["labeled"].subjects  # per class
    assert min(demo.fractions) * train_subjects <= 1.5  # about one labelled subject per class
    assert len(demo.fractions) == 3 and demo.seeds == 2 and max(demo.fractions) == 1.0


def test_demo_stores_an_experiment_an_audit_a_leakage_run_a_gradcam_run_and_an_embedding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy import func, select

    from sslmri_core.store import queries
    from sslmri_core.store.schema import CamStat, Embedding

    monkeypatch.setattr(builtin, "BUILTIN_SETS", {
        "labeled": SynthConfig(task="tumor", subjects=5, slices_per_subject=2, size=48, seed=0),
        "pretrain": SynthConfig(task="tumor", subjects=6, slices_per_subject=2, size=48, seed=1000),
    })
    monkeypatch.setenv("SSLMRI_CACHE", str(tmp_path / "cache"))
    store = RunStore(f"sqlite:///{tmp_path / 'runs.db'}")
    cfg = DemoConfig(model="test_resnet", image_size=48, batch_size=4, fractions=[0.3, 0.6, 1.0], seeds=2,
                     pretrain_epochs=1, finetune_epochs=1, min_steps=2, bootstrap=20, leakage_image_size=48,
                     leakage_steps=2, gradcam_limit=4, precision="fp32")
    result = run_demo(store, out=str(tmp_path / "runs"), cfg=cfg, show_progress=False)
    assert all(r.status == "finished" for r in store.list_runs())

    # The experiment: every arm x 3 fractions x 2 seeds, one budget per fraction, pretrained once.
    (exp,) = store.list_runs("experiment")
    children = [r for r in store.list_runs("finetune") if r.parent_run_id == exp.id]
    assert {(c.config["arm"], c.config["label_fraction"], c.config["seed"]) for c in children} == {
        (a, f, s) for a in DEMO_ARMS for f in (0.3, 0.6, 1.0) for s in (0, 1)}
    assert len(children) == len(DEMO_ARMS) * 3 * 2
    for fraction in (0.3, 0.6, 1.0):  # the same steps for every arm and seed at a fraction
        budgets = {store.params(c.id)["optimizer_steps"] for c in children if c.config["label_fraction"] == fraction}
        assert len(budgets) == 1
    (pre,) = store.list_runs("pretrain")
    assert pre.parent_run_id == exp.id and result.experiment.pretrain_run == pre.id
    assert result.experiment.extra["pool_images"] == 4 * 6 * 2  # the built-in pool, all of it
    # ... and its answer: each SSL arm minus scratch at each fraction, with an interval
    answer = result.answer()
    assert {(p["arm"], p["fraction"]) for p in answer} == {(a, f) for a in SSL_ARMS for f in (0.3, 0.6, 1.0)}
    assert all(p["baseline"] == "scratch" and p["n_seeds"] == 2 and len(p["ci"]) == 2 for p in answer)
    assert set(result.label_counts) == {0.3, 0.6, 1.0} and all(len(n) == 2 for n in result.label_counts.values())

    # The audits of the labelled set (the data set the experiment used) and of the pool (the Data page); the
    # labelled set is the newest data set, the one the page opens on.
    datasets = queries.datasets_frame(store.engine)
    assert list(datasets["root"]) == [str(builtin.builtin_task_root("tumor")), str(builtin.builtin_root("pretrain"))]
    assert not datasets["audit_id"].isna().any()
    audited = datasets.iloc[:1]
    assert result.audit["audit_id"] == int(audited["audit_id"].iloc[0])
    assert result.pool_audit["dataset_id"] == int(datasets["id"].iloc[1])

    # The leakage demonstration on the labelled set: four children, shown beside the audit.
    (leak,) = store.list_runs("leakage")
    assert len([r for r in store.list_runs("finetune") if r.parent_run_id == leak.id]) == 4
    assert queries.latest_leakage(store.engine, int(audited["id"].iloc[0]), str(audited["root"].iloc[0])) is not None

    # Grad-CAM of one fine-tuned SSL model, the newest model (the one the Scan Explorer opens on), and the SSL
    # encoder's map (Embeddings).
    (cam,) = store.list_runs("gradcam")
    explained = store.get_run(cam.parent_run_id)
    assert explained.parent_run_id == exp.id and explained.config["arm"] == "ssl-full"
    assert explained.config["label_fraction"] == 1.0 and explained.config["seed"] == 1
    assert explained.id == max(r.id for r in store.list_runs("finetune")) == result.explained_run
    with store.engine.connect() as conn:
        assert 0 < conn.execute(select(func.count()).select_from(CamStat)).scalar_one() <= 4
        embedded = set(conn.execute(select(Embedding.run_id).distinct()).scalars())
    assert embedded == {pre.id} == set(result.embedded)

    # The two pages that had nothing to show after the old demo: the curves of the experiment, the audit.
    monkeypatch.setenv("SSLMRI_DB", store.url)
    ssl = _open_page("pages/2_SSL_vs_Supervised.py")
    assert ssl.selectbox(key="experiment").value == exp.id and len(ssl.get("plotly_chart")) == 2
    data = _open_page("pages/6_Data.py")
    text = " ".join(str(e.value) for kind in ("subheader", "info", "caption") for e in getattr(data, kind))
    assert "Audit" in text and "not been audited" not in text and "Not run yet" not in text
    assert len(data.get("plotly_chart")) >= 2  # class balance and the leakage 2x2
    assert _open_page("pages/4_Scan_Explorer.py").selectbox(key="model").value == explained.id

    # A second `make demo` trains nothing again: the experiment resumes, leakage and Grad-CAM are reused.
    before = {r.id: r.kind for r in store.list_runs()}
    again = run_demo(store, out=str(tmp_path / "runs"), cfg=cfg, show_progress=False)
    assert {r.id: r.kind for r in store.list_runs()} == before
    assert again.leakage == result.leakage and again.gradcam_run == cam.id
    assert again.answer() == answer


def _open_page(page: str) -> Any:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "dashboard" / "Home.py"), default_timeout=60)
    at.run()
    at.switch_page(page)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at
