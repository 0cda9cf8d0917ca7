"""The SSL-vs-supervised grid: children on identical splits, a summary with intervals, resuming."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_json import invoke as _invoke

from sslmri_core.store.writer import RunStore

TINY = ["--model", "test_resnet", "--image-size", "64", "--batch-size", "8", "--epochs", "1", "--min-steps", "4",
        "--pretrain-epochs", "1", "--bootstrap", "20", "--precision", "fp32", "--no-progress"]




def _children(store: RunStore, experiment_id: int, kind: str = "finetune") -> list:
    return [r for r in store.list_runs(kind) if r.parent_run_id == experiment_id]


def _labelled(store: RunStore, run_id: int) -> frozenset[str]:
    from sqlalchemy import select

    from sslmri_core.store.schema import SplitAssignment

    stmt = select(SplitAssignment.key).where(SplitAssignment.run_id == run_id, SplitAssignment.labeled)
    with store.engine.connect() as conn:
        return frozenset(k for (k,) in conn.execute(stmt))


def test_grid_children_share_one_split_and_the_summary_pairs_by_seed(synth_tumor: Path, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    code, out, err = _invoke(["experiment", "--data", str(synth_tumor), "--fractions", "0.5,1.0", "--seeds", "2",
                              "--arms", "ssl-linear,scratch", *TINY, "--db", db, "--out", str(tmp_path / "runs"),
                              "--json"])
    assert code == 0, err
    store = RunStore(db)
    exp = store.get_run(out["run_id"])
    assert exp.kind == "experiment" and exp.status == "finished"
    children = _children(store, exp.id)
    assert len(children) == 2 * 2 * 2 and all(c.status == "finished" for c in children)
    assert len(_children(store, exp.id, "pretrain")) == 1 == len(store.list_runs("pretrain"))
    assert {(c.config["arm"], c.config["label_fraction"], c.config["seed"]) for c in children} == {
        (a, f, s) for a in ("ssl-linear", "scratch") for f in (0.5, 1.0) for s in (0, 1)}

    splits = {c.id: store.split_of(c.id) for c in children}
    test_sets = {frozenset(k for k, v in sp.items() if v == "test") for sp in splits.values()}
    assert len(test_sets) == 1  # every arm, fraction and seed is tested on the same images

    # Pretraining saw the training subjects only: no val or test image of the children is in its pool.
    pre = _children(store, exp.id, "pretrain")[0]
    pool = {k for k, v in store.split_of(pre.id).items() if v == "pool"}
    child_split = next(iter(splits.values()))
    assert pool and pool == {k for k, v in child_split.items() if v == "train"}

    labelled = {(c.config["arm"], c.config["label_fraction"], c.config["seed"]): _labelled(store, c.id)
                for c in children}
    for arm in ("ssl-linear", "scratch"):
        for seed in (0, 1):  # label budgets are nested, and the same for every arm at a fraction and seed
            assert labelled[(arm, 0.5, seed)] < labelled[(arm, 1.0, seed)]
            assert labelled[(arm, 0.5, seed)] == labelled[("scratch", 0.5, seed)]

    steps = {c.id: int(store.params(c.id)["optimizer_steps"]) for c in children}
    for fraction in (0.5, 1.0):  # one budget per fraction, whatever the arm: never fewer than --min-steps
        budget = {steps[c.id] for c in children if c.config["label_fraction"] == fraction}
        assert len(budget) == 1 and budget.pop() >= 4
    assert out["ssl_pool_test_overlap"] == 0

    summary = {(r["arm"], r["fraction"]): r for r in out["summary"] if r["metric"] == "test_balanced_accuracy"}
    assert set(summary) == {(a, f) for a in ("ssl-linear", "scratch") for f in (0.5, 1.0)}
    n_test_subjects = len({k.split("/")[-1].split("_")[0] for k in next(iter(test_sets))})
    final = {c.id: store.final_metrics(c.id)["test_balanced_accuracy"] for c in children}
    by_cell = {(c.config["arm"], c.config["label_fraction"], c.config["seed"]): final[c.id] for c in children}
    for (arm, fraction), row in summary.items():
        assert row["n_seeds"] == 2 and row["n_test_subjects"] == n_test_subjects
        assert row["steps"] == steps[next(c.id for c in children if c.config["label_fraction"] == fraction)]
        assert row["mean"] == pytest.approx((by_cell[(arm, fraction, 0)] + by_cell[(arm, fraction, 1)]) / 2)
    paired = [p for p in out["paired"] if p["metric"] == "test_balanced_accuracy"]
    assert {(p["arm"], p["baseline"], p["fraction"]) for p in paired} == {
        ("ssl-linear", "scratch", 0.5), ("ssl-linear", "scratch", 1.0)}
    for p in paired:
        diffs = [by_cell[("ssl-linear", p["fraction"], s)] - by_cell[("scratch", p["fraction"], s)] for s in (0, 1)]
        assert p["mean"] == pytest.approx(sum(diffs) / 2) and p["n_test_subjects"] == n_test_subjects
        assert len(p["ci"]) == 2
    assert store.results(exp.id)["summary"]["summary"] == out["summary"]


def _pool_groups(store: RunStore, run_id: int, side: str) -> set[str]:
    return {h for _, split, h, _ in store.split_content(run_id) if split == side}


def test_a_class_map_pretrains_on_exactly_the_childrens_training_groups(synth_tumor: Path, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    code, out, err = _invoke(["experiment", "--data", str(synth_tumor), "--fractions", "1.0", "--seeds", "1",
                              "--arms", "ssl-linear", "--class-map", "glioma=tumour,meningioma=tumour,pituitary=tumour",
                              *TINY, "--db", db, "--out", str(tmp_path / "runs"), "--json"])
    assert code == 0, err
    store = RunStore(db)
    (pre,) = _children(store, out["run_id"], "pretrain")
    (child,) = _children(store, out["run_id"])
    assert _pool_groups(store, pre.id, "pool") == _pool_groups(store, child.id, "train")  # by content
    assert not _pool_groups(store, pre.id, "pool") & _pool_groups(store, child.id, "test")
    assert out["ssl_pool_test_overlap"] == 0


def test_folds_test_every_subject_once_with_pretraining_per_fold(synth_tumor: Path, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    code, out, err = _invoke(["experiment", "--data", str(synth_tumor), "--folds", "2", "--fractions", "1.0",
                              "--seeds", "1", "--arms", "ssl-linear,scratch", *TINY, "--db", db,
                              "--out", str(tmp_path / "runs"), "--json"])
    assert code == 0, err
    store = RunStore(db)
    pretrains = _children(store, out["run_id"], "pretrain")
    assert out["folds"] == 2 and sorted(r.config["fold"] for r in pretrains) == [0, 1]
    children = _children(store, out["run_id"])
    tested: list[str] = []
    for child in (c for c in children if c.config["arm"] == "scratch"):
        tested += [k for k, v in store.split_of(child.id).items() if v == "test"]
        pool_of_fold = next(p for p in pretrains if p.config["fold"] == child.config["fold"])
        assert _pool_groups(store, pool_of_fold.id, "pool") == _pool_groups(store, child.id, "train")
    assert sorted(tested) == sorted({k for c in children for k in store.split_of(c.id)})  # each image once
    subjects = {Path(k).name.split("_")[0] for k in tested}
    for row in out["summary"]:
        assert row["n_test_subjects"] == len(subjects) == 20


def test_the_summary_names_a_fold_whose_test_class_had_no_training_image(synth_lonely_class: Path,
                                                                        tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    code, out, err = _invoke(["experiment", "--data", str(synth_lonely_class), "--folds", "5", "--fractions", "1.0",
                              "--seeds", "1", "--arms", "scratch", *TINY, "--db", db,
                              "--out", str(tmp_path / "runs"), "--json"])
    assert code == 0, err
    (fold, classes), = out["untrained_test_classes"].items()  # notumor's one subject is tested by one fold only
    assert classes == ["notumor"] and 1 <= int(fold) <= 5
    assert f"no training image of notumor in the split of fold {fold}" in " ".join(err.split())


@pytest.mark.parametrize("folds, expected", [("1", "--folds must be at least 2"), ("21", "more than the 20 groups")])
def test_impossible_folds_are_refused_before_anything_is_stored(
    synth_tumor: Path, tmp_path: Path, folds: str, expected: str
) -> None:
    db = f"sqlite:///{tmp_path / 'r.db'}"
    code, _, err = _invoke(["experiment", "--data", str(synth_tumor), "--folds", folds, *TINY, "--db", db])
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1
    assert RunStore(db).list_runs() == []


def test_arms_without_ssl_do_not_pretrain(synth_tumor: Path, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    code, out, err = _invoke(["experiment", "--data", str(synth_tumor), "--fractions", "1.0", "--seeds", "1",
                              "--arms", "scratch", *TINY, "--db", db, "--out", str(tmp_path / "runs"), "--json"])
    assert code == 0, err
    assert RunStore(db).list_runs("pretrain") == [] and out["pretrain_run"] is None


def test_changed_data_is_another_experiment(synth_tumor: Path, tmp_path: Path) -> None:
    import shutil

    data = tmp_path / "d"
    shutil.copytree(synth_tumor, data)
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    args = ["experiment", "--data", str(data), "--fractions", "1.0", "--seeds", "1", "--arms", "scratch", *TINY,
            "--db", db, "--out", str(tmp_path / "runs"), "--json"]
    code, first, err = _invoke(args)
    assert code == 0, err
    victim = sorted((data / "glioma").glob("*.png"))[0]
    victim.unlink()  # delete one file and relabel another: the old results no longer describe this folder
    moved = sorted((data / "glioma").glob("*.png"))[0]
    moved.rename(data / "meningioma" / moved.name)
    code, second, err = _invoke(args)
    assert code == 0, err
    assert second["run_id"] != first["run_id"] and second["children"] == {"ran": 1, "skipped": 0, "failed": 0}


def test_an_interrupted_grid_resumes_where_it_stopped(
    synth_tumor: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sslmri_core.train.finetune as ft

    db = f"sqlite:///{tmp_path / 'runs.db'}"
    args = ["experiment", "--data", str(synth_tumor), "--fractions", "1.0", "--seeds", "2",
            "--arms", "ssl-linear,scratch", *TINY, "--db", db, "--out", str(tmp_path / "runs"), "--json"]
    real = ft.finetune
    calls: list[tuple[str, int]] = []

    def stop_at_third(cfg, store, **kw):  # type: ignore[no-untyped-def]
        calls.append((cfg.arm, cfg.seed))
        if len(calls) == 3:
            raise KeyboardInterrupt("stopped by the test")
        return real(cfg, store, **kw)

    monkeypatch.setattr(ft, "finetune", stop_at_third)
    code, _, err = _invoke(args)
    assert code == 130, err
    store = RunStore(db)
    (exp,) = store.list_runs("experiment")
    assert exp.status == "interrupted"
    assert sum(c.status == "finished" for c in _children(store, exp.id)) == 2

    def fail_scratch_seed_1(cfg, store, **kw):  # type: ignore[no-untyped-def]
        if cfg.arm == "scratch" and cfg.seed == 1:
            raise RuntimeError("simulated crash")
        return real(cfg, store, **kw)

    monkeypatch.setattr(ft, "finetune", fail_scratch_seed_1)
    code, _, err = _invoke(args)
    assert code == 1 and "re-run the same command" in err
    assert store.get_run(exp.id).status == "failed"
    assert sum(c.status == "finished" for c in _children(store, exp.id)) == 3

    monkeypatch.setattr(ft, "finetune", real)
    code, out, err = _invoke(args)
    assert code == 0, err
    assert out["run_id"] == exp.id and out["children"] == {"ran": 1, "skipped": 3, "failed": 0}
    assert store.get_run(exp.id).status == "finished"
    assert sum(c.status == "finished" for c in _children(store, exp.id)) == 4
    assert len(store.list_runs("experiment")) == 1 and len(store.list_runs("pretrain")) == 1  # pretrained once

    # other settings are another experiment
    code, out2, err = _invoke([*args[:-1], "--seeds", "1", "--json"])
    assert code == 0, err
    assert out2["run_id"] != exp.id


def test_the_presets_recipes_reach_the_children_and_the_pretraining(synth_tumor: Path, tmp_path: Path) -> None:
    """--preset cpu: every child takes the fine-tuning recipe (label smoothing, TTA, augmentation) and the
    pretraining run the pretraining recipe (its batch size), under the experiment's own settings."""
    from dataclasses import asdict

    from sslmri_core.config import PRESETS

    db = f"sqlite:///{tmp_path / 'runs.db'}"
    fast = [a for a in TINY if a not in ("--batch-size", "8")]  # the preset's batch sizes
    code, out, err = _invoke(["experiment", "--data", str(synth_tumor), "--preset", "cpu", "--fractions", "1.0",
                              "--seeds", "1", "--arms", "ssl-linear,scratch", *fast, "--db", db,
                              "--out", str(tmp_path / "runs"), "--json"])
    assert code == 0, err
    store = RunStore(db)
    recipe, pretrain_recipe = PRESETS["cpu"]["finetune"], PRESETS["cpu"]["pretrain"]
    children = _children(store, out["run_id"])
    assert len(children) == 2
    for child in children:
        assert child.config["label_smoothing"] == recipe["label_smoothing"] > 0
        assert child.config["tta"] is recipe["tta"] is True
        assert child.config["augment"] == asdict(recipe["augment"])
        assert child.config["preset"] == "cpu" and child.config["preprocess"] == recipe["preprocess"]
        # ... the experiment's own settings win: its model, size, epochs, and its preset's batch size
        assert (child.config["model"], child.config["image_size"]) == ("test_resnet", 64)
        assert child.config["batch_size"] == PRESETS["cpu"]["experiment"]["batch_size"]
    (pre,) = _children(store, out["run_id"], "pretrain")
    assert pre.config["batch_size"] == pretrain_recipe["batch_size"] != PRESETS["cpu"]["experiment"]["batch_size"]
    assert pre.config["preset"] == "cpu" and pre.config["preprocess"] == pretrain_recipe["preprocess"]
    assert (pre.config["model"], pre.config["image_size"], pre.config["epochs"]) == ("test_resnet", 64, 1)


def test_the_pretraining_batch_is_its_own_else_the_experiments() -> None:
    from sslmri_core.config import PRESETS, ExperimentConfig, preset_settings, with_overrides
    from sslmri_core.evaluation.experiment import pretrain_settings

    cpu = with_overrides(ExperimentConfig(), **preset_settings("cpu", "experiment"))
    assert pretrain_settings(cpu)["batch_size"] == PRESETS["cpu"]["pretrain"]["batch_size"] != cpu.batch_size
    assert pretrain_settings(with_overrides(cpu, batch_size=8))["batch_size"] == cpu.pretrain_batch_size
    assert pretrain_settings(ExperimentConfig(batch_size=8)) == {"batch_size": 8}  # no preset: the experiment's


def test_preprocess_and_unlabeled_folders_reach_the_pretraining_and_every_child(
    synth_tumor: Path, tmp_path: Path
) -> None:
    from sslmri_core.config import SynthConfig
    from sslmri_core.data.synth import generate

    generate(tmp_path / "more", SynthConfig(task="tumor", subjects=1, slices_per_subject=1, size=64, seed=77))
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    code, out, err = _invoke(["experiment", "--data", str(synth_tumor), "--preprocess", "crop",
                              "--unlabeled", str(tmp_path / "more"), "--fractions", "1.0", "--seeds", "1",
                              "--arms", "ssl-linear,scratch", *TINY, "--db", db, "--out", str(tmp_path / "runs"),
                              "--json"])
    assert code == 0, err
    store = RunStore(db)
    (pre,) = _children(store, out["run_id"], "pretrain")
    assert pre.config["preprocess"] == "crop" and pre.config["unlabeled"] == [str((tmp_path / "more").resolve())]
    assert pre.config["batch_size"] == 8  # no preset: the experiment's batch size
    children = _children(store, out["run_id"])
    assert len(children) == 2 and {c.config["preprocess"] for c in children} == {"crop"}
    assert store.get_run(out["run_id"]).config["preprocess"] == "crop"
    # The summary says how big the SSL pool was (and, where pretraining logged it, how much came from --unlabeled).
    params = store.params(pre.id)
    assert out["pool_images"] == int(params["n_images"])
    for name in ("unlabeled_images", "unlabeled_overlap"):
        assert out.get(name) == (int(params[name]) if params.get(name) is not None else None)
    # The same command resumes; another unlabeled pool is another experiment (its children never mix in).
    command = ["experiment", "--data", str(synth_tumor), "--preprocess", "crop", "--unlabeled", str(tmp_path / "more"),
               "--fractions", "1.0", "--seeds", "1", "--arms", "ssl-linear,scratch", *TINY, "--db", db,
               "--out", str(tmp_path / "runs"), "--json"]
    again = _invoke(command)[1]
    assert again["run_id"] == out["run_id"] and again["children"]["skipped"] == 2
    generate(tmp_path / "more" / "extra", SynthConfig(task="tumor", subjects=1, slices_per_subject=1, size=64, seed=78))
    other = _invoke(command)[1]
    assert other["run_id"] != out["run_id"] and other["children"]["ran"] == 2


@pytest.mark.parametrize("args, expected", [
    (["--preprocess", "sharpen"], "--preprocess must be one of none, crop, norm, crop+norm"),
    (["--unlabeled", "/no/such/folder"], "--unlabeled: no such folder /no/such/folder"),
])
def test_a_bad_preprocess_or_unlabeled_folder_is_one_line_and_stores_nothing(
    synth_tumor: Path, tmp_path: Path, args: list[str], expected: str
) -> None:
    db = f"sqlite:///{tmp_path / 'r.db'}"
    code, _, err = _invoke(["experiment", "--data", str(synth_tumor), *args, *TINY, "--db", db])
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err
    assert RunStore(db).list_runs() == []


@pytest.mark.parametrize("args, expected", [
    (["--fractions", "0,1"], "--fractions"),
    (["--fractions", "a,b"], "--fractions"),
    (["--arms", "ssl-linear,magic"], "--arms"),
    (["--arms", "imagenet"], "--weights"),
    (["--seeds", "0"], "--seeds"),
    (["--preset", "gpu-cluster"], "--preset"),
    (["--pretrain-run", "99"], "--pretrain-run 99"),
])
def test_bad_experiment_options_are_one_line(tmp_path: Path, args: list[str], expected: str) -> None:
    code, _, err = _invoke(["experiment", *args, "--model", "test_resnet", "--db", f"sqlite:///{tmp_path / 'r.db'}"])
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1


def test_a_folder_without_images_records_no_experiment(tmp_path: Path) -> None:
    (tmp_path / "empty" / "a").mkdir(parents=True)
    db = f"sqlite:///{tmp_path / 'r.db'}"
    code, _, err = _invoke(["experiment", "--data", str(tmp_path / "empty"), *TINY, "--db", db])
    assert code == 2 and "no usable images" in err
    assert RunStore(db).list_runs() == []


def test_a_given_split_sharing_subjects_is_refused_and_records_nothing(synth_tumor: Path, tmp_path: Path) -> None:
    import shutil

    shutil.copytree(synth_tumor, tmp_path / "d" / "Training")
    shutil.copytree(synth_tumor, tmp_path / "d" / "Testing")  # every subject (and image) on both sides
    db = f"sqlite:///{tmp_path / 'r.db'}"
    code, _, err = _invoke(["experiment", "--data", str(tmp_path / "d"), "--use-given-split", *TINY, "--db", db])
    assert code == 2 and "20 subject(s)" in err and "--allow-leaky-split" in err and len(err.strip().splitlines()) == 1
    assert RunStore(db).list_runs() == []


def test_without_use_given_split_the_folders_are_pooled_and_split_by_group(synth_tumor: Path, tmp_path: Path) -> None:
    import shutil

    shutil.copytree(synth_tumor, tmp_path / "d" / "Training")
    shutil.copytree(synth_tumor, tmp_path / "d" / "Testing")
    db = f"sqlite:///{tmp_path / 'r.db'}"
    code, out, err = _invoke(["experiment", "--data", str(tmp_path / "d"), "--fractions", "1.0", "--seeds", "1",
                              "--arms", "scratch", *TINY, "--db", db, "--out", str(tmp_path / "runs"), "--json"])
    assert code == 0, err
    assert "pooled and split by group" in " ".join(err.split())
    store = RunStore(db)
    (child,) = _children(store, out["run_id"])
    rows = store.split_content(child.id)
    side_of_content: dict[str, set[str]] = {}
    for _, split, content, _ in rows:
        side_of_content.setdefault(content, set()).add(split)
    assert all(len(sides) == 1 for sides in side_of_content.values())  # a file and its copy: one side
