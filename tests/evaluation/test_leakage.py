"""The leakage demonstration (``cli.py leakage``): labels shuffled per subject, four children, what
it stores, and the refusals. Generated data only: every subject a distinct texture, its slices
near-identical copies, so a model that saw a subject's other slices recognises it."""

from __future__ import annotations

import collections
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from cli_json import invoke
from sslmri_core.evaluation import leakage as lk
from sslmri_core.config import LeakageConfig
from sslmri_core.store.writer import RunStore

CLASSES = ("a", "b", "c", "d")  # 4 classes: chance 0.25, far below a model that recognises subjects
SUBJECTS = 10  # per class: the subject split tests ~8 subjects
SLICES = 4
SIZE = 32
# test_resnet at 32 px: ~2 s per child on an idle 2-core machine; 300 steps memorise the 40 subjects.
TINY = ["--model", "test_resnet", "--image-size", str(SIZE), "--batch-size", "8", "--steps", "300", "--lr", "0.003",
        "--precision", "fp32", "--no-progress"]


def write_subjects(root: Path, *, ids: bool = True, subjects: int = SUBJECTS, seed: int = 0) -> Path:
    """``root/<class>/sub-CSS_slice-K.png``: per subject a random blocky texture (mirror-symmetric, so a
    flip keeps it) and per slice small noise. Nothing in an image tells its class: only its subject."""
    rng = np.random.default_rng(seed)
    for c, label in enumerate(CLASSES):
        for s in range(subjects):
            cells = rng.random((8, 8))
            cells = cells + cells[:, ::-1]
            base = np.kron((cells - cells.min()) / np.ptp(cells), np.ones((SIZE // 8, SIZE // 8))) * 200 + 20
            for k in range(SLICES):
                img = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
                name = f"sub-{c}{s:02d}_slice-{k}.png" if ids else f"scan{c}{s:02d}{k}.png"
                (root / label).mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(root / label / name)
    return root


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], RunStore, Path]:
    """One ``cli.py leakage --json`` run on the generated subjects (shared: it trains four models)."""
    base = tmp_path_factory.mktemp("leak")
    data = write_subjects(base / "data")
    url = f"sqlite:///{base / 'runs.db'}"
    code, out, err = invoke(["leakage", "--data", str(data), *TINY, "--db", url, "--out", str(base / "runs"), "--json"])
    assert code == 0, err
    assert out is not None
    return out, RunStore(url), data


def _load(root: Path) -> Any:
    from sslmri_core.data.loading import load_folder

    return load_folder(root, SIZE)


# -- the behaviour users rely on --------------------------------------------------------------------
def test_image_split_recognises_subjects_the_subject_split_does_not(demo: tuple[dict[str, Any], RunStore, Path]) -> None:
    """Shuffled per subject, labels carry no class: the image split still scores (it has seen each test
    subject's other slices), the subject split does not. Fails when the image child is not split by
    image, when labels are shuffled per slice (nothing left to recognise), or when the subject split leaks."""
    out, _, _ = demo
    image, subject, chance = out["image"]["shuffled"], out["subject"]["shuffled"], out["chance"]
    assert chance == 0.25
    assert image >= 0.8, out  # seeds 0-4 of this set: 0.92-1.0
    assert subject <= chance + 0.25, out  # seeds 0-4: 0.0-0.5 (about 8 test subjects)
    assert image - subject >= 0.4, out
    assert out["subjects_across_train_test"]["subject"] == 0
    assert out["subjects_across_train_test"]["image"] >= SUBJECTS  # about half the subjects sit on both sides


def test_json_shape_and_what_is_stored(demo: tuple[dict[str, Any], RunStore, Path]) -> None:
    """A ``leakage`` run with four ``finetune`` children (one per cell) and the 2x2 as its ``leakage`` result."""
    out, store, _ = demo
    assert {"run_id", "subject", "image", "chance"} <= set(out)
    for unit in ("subject", "image"):
        assert set(out[unit]) == {"true", "shuffled"}
        assert all(0.0 <= v <= 1.0 for v in out[unit].values())
    run = store.get_run(out["run_id"])
    assert (run.kind, run.status) == ("leakage", "finished")
    children = [r for r in store.list_runs("finetune") if r.parent_run_id == run.id]
    assert len(children) == 4 and all(r.status == "finished" for r in children)
    by_arm = {r.config["arm"]: r for r in children}
    assert set(by_arm) == {f"leakage-{u}-{lab}" for u in ("subject", "image") for lab in ("true", "shuffled")}
    for unit in ("subject", "image"):
        for labels in ("true", "shuffled"):
            child = by_arm[f"leakage-{unit}-{labels}"]
            assert out["children"][unit][labels] == child.id
            assert child.config["split_unit"] == {"subject": "group", "image": "image"}[unit]
            assert store.final_metrics(child.id)["test_balanced_accuracy"] == pytest.approx(out[unit][labels])
    # the same budget, seed and split seed for all four
    assert len({(r.config["steps"], r.config["seed"], r.config["split_seed"]) for r in children}) == 1
    stored = store.results(run.id)["leakage"]
    assert {k: stored[k] for k in ("subject", "image", "chance")} == {k: out[k] for k in ("subject", "image", "chance")}


def test_shuffled_children_were_trained_on_per_subject_labels(demo: tuple[dict[str, Any], RunStore, Path]) -> None:
    """The shuffled children's stored test labels are one per subject and differ from the truth for some subjects."""
    from sslmri_core.store.queries import predictions_frame

    out, store, _ = demo
    for unit in ("subject", "image"):
        preds = predictions_frame(store.url, out["children"][unit]["shuffled"], "test")
        truth = preds["scan"].map(lambda p: Path(p).parent.name)
        assert (preds.groupby("subject")["true_label"].nunique() == 1).all()
        assert (preds["true_label"] != truth).any()


# -- the labels -------------------------------------------------------------------------------------
def test_shuffle_per_subject_keeps_subjects_whole_and_class_counts(tmp_path: Path) -> None:
    """Fails for a per-slice shuffle (a subject's slices disagree), a uniform redraw (class counts of
    subjects change), a shuffle that moves images, or one that ignores its seed."""
    data = _load(write_subjects(tmp_path / "data", subjects=6))
    truth = lk.subject_labels(data)
    shuffled = lk.shuffle_per_subject(data, seed=3)
    new = lk.subject_labels(shuffled)
    per_subject = collections.defaultdict(set)
    for it in shuffled.items:
        per_subject[it.subject].add(it.label)
    assert all(len(labels) == 1 for labels in per_subject.values())
    assert collections.Counter(new.values()) == collections.Counter(truth.values())
    assert sum(new[s] != truth[s] for s in truth) >= 2
    assert shuffled.images is data.images and [it.key for it in shuffled.items] == [it.key for it in data.items]
    assert lk.subject_labels(lk.shuffle_per_subject(data, seed=3)) == new
    assert any(lk.subject_labels(lk.shuffle_per_subject(data, seed=s)) != new for s in range(4, 8))
    assert [it.label for it in data.items] == [it.label for it in _load(tmp_path / "data").items]  # input untouched


def test_split_check_refuses_a_split_that_did_not_do_what_was_asked() -> None:
    """If finetune ever ignored ``split_unit``, the demonstration would silently compare two subject splits."""
    lk._check_split("image", 5, 1)
    lk._check_split("subject", 0, 1)
    with pytest.raises(RuntimeError, match="not honoured"):
        lk._check_split("image", 0, 1)
    with pytest.raises(RuntimeError, match="subject"):
        lk._check_split("subject", 2, 1)


def test_budget_is_the_same_steps_for_every_child() -> None:
    cfg = LeakageConfig(data="x", batch_size=64, epochs=4)
    assert lk.budget_steps(cfg, 5700) == 4 * 63  # 4 passes over 70% of the images (63 batches of 64)
    assert lk.budget_steps(dataclasses.replace(cfg, steps=17), 5700) == 17
    children = [lk.child_config(cfg, u, lab, 99) for u in lk.UNITS for lab in lk.LABELINGS]
    assert {(c.steps, c.seed, c.split_seed, c.init, c.model) for c in children} == {(99, 0, 0, "scratch", "resnet18")}


# -- refusals ---------------------------------------------------------------------------------------
def test_a_folder_without_subject_ids_is_refused_in_one_line(tmp_path: Path) -> None:
    data = write_subjects(tmp_path / "data", ids=False, subjects=3)
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    code, _, err = invoke(["leakage", "--data", str(data), *TINY, "--db", url, "--out", str(tmp_path / "runs")])
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "subject id" in err
    assert RunStore(url).list_runs() == []  # nothing recorded


@pytest.mark.parametrize("args, option", [(["--epochs", "0"], "--epochs"), (["--steps", "0"], "--steps"),
                                          (["--image-size", "8"], "--image-size"), (["--model", "nope"], "--model")])
def test_bad_options_are_one_line_and_exit_2(tmp_path: Path, args: list[str], option: str) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    code, _, err = invoke(["leakage", "--data", str(tmp_path), *args, "--db", url])
    assert code == 2 and len(err.strip().splitlines()) == 1 and option in err
    assert not (tmp_path / "runs.db").exists()  # refused before the store is opened


# -- the dashboard's loader -------------------------------------------------------------------------
def test_latest_leakage_is_the_newest_finished_run_of_that_data_set(tmp_path: Path) -> None:
    from sslmri_core.store.queries import latest_leakage

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    store = RunStore(url)

    def add(dataset: int, root: str, value: float, status: str = "finished") -> int:
        run = store.start_run("leakage", {"model": "test_resnet"})
        store.log_params(run, {"dataset": dataset, "data_root": root})
        store.log_result(run, "leakage", {"run_id": run, "subject": {"true": value, "shuffled": 0.25},
                                          "image": {"true": 0.9, "shuffled": 0.8}, "chance": 0.25})
        store.end_run(run, status)
        return run

    old = add(1, "/d/one", 0.5)
    newest = add(1, "/d/one", 0.6)
    add(1, "/d/one", 0.7, status="failed")
    add(2, "/d/two", 0.4)
    found = latest_leakage(url, 1, "/d/one")
    assert found is not None and found.run_id == newest and found.cells["subject"]["true"] == 0.6
    assert found.chance == 0.25 and len(found.frame()) == 4
    assert latest_leakage(url, 9, "/d/one").run_id == newest  # a new manifest of the same folder: matched by root
    assert latest_leakage(url, 9, "/d/none") is None
    assert old != newest
