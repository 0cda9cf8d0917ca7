"""Evaluation on hand-made predictions: subject aggregation, the vectorised subject bootstrap, ECE, ROC-AUC."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

from sslmri_core.evaluation.metrics import (
    aggregate_by_subject,
    bootstrap_intervals,
    evaluate_split,
    expected_calibration_error,
    resample_counts,
    subject_groups,
    weighted_scores,
)

from cli_json import invoke as _invoke

CLASSES = ["a", "b", "c"]


def _random_predictions(n_subjects: int = 12, slices: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_subjects) % 3, slices)
    logits = rng.normal(size=(len(y), 3)) + 1.5 * np.eye(3)[y]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    subjects = [f"s{i // slices:02d}" for i in range(len(y))]
    return y, probs, subjects


def test_subject_probabilities_are_the_mean_of_its_slices() -> None:
    y = np.array([0, 0, 1, 1, 1])
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.2, 0.8], [0.6, 0.4], [0.1, 0.9]])
    group, names = subject_groups(["p1", "p1", "p2", "p2", "p2"])
    y_subj, p_subj = aggregate_by_subject(y, probs, group, len(names))
    assert names == ["p1", "p2"]
    assert y_subj.tolist() == [0, 1]
    np.testing.assert_allclose(p_subj, [[0.6, 0.4], [0.3, 0.7]])
    # p1's slices disagree (one right, one wrong), its mean is right: slice accuracy 3/5, subject accuracy 1.
    result = evaluate_split(y, probs, ["p1", "p1", "p2", "p2", "p2"], ["x", "y"], "test", n_boot=50)
    assert result.metrics["test_accuracy"] == pytest.approx(3 / 5)
    assert result.metrics["test_subject_accuracy"] == 1.0
    assert result.confusion["subject"].tolist() == [[1, 0], [0, 1]]
    assert result.confusion["slice"].tolist() == [[1, 1], [1, 2]]


def test_missing_subject_ids_make_each_image_its_own_subject() -> None:
    group, names = subject_groups([None, None, "p"])
    assert len(names) == 3 and len(set(group.tolist())) == 3


def test_weighted_scores_with_unit_weights_equal_scikit_learn() -> None:
    y, probs, _ = _random_predictions()
    pred = probs.argmax(axis=1)
    got = {k: float(v[0]) for k, v in weighted_scores(y, probs, np.ones((1, len(y)))).items()}
    assert got["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert got["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert got["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert got["roc_auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))


def test_each_bootstrap_replicate_equals_scoring_the_resampled_subjects() -> None:
    y, probs, subjects = _random_predictions()
    group, names = subject_groups(subjects)
    counts = resample_counts(np.arange(len(names)) % 3, 20, seed=3)  # stratified by each subject's class
    scores = weighted_scores(y, probs, counts[:, group])
    for b in range(20):
        # the slow way: materialise the resample (each drawn subject's slices, as many times as drawn)
        rows = np.concatenate([np.flatnonzero(group == g).repeat(1) for g in range(len(names))
                               for _ in range(int(counts[b, g]))])
        yb, pb = y[rows], probs[rows]
        assert scores["accuracy"][b] == pytest.approx(accuracy_score(yb, pb.argmax(1)))
        assert scores["balanced_accuracy"][b] == pytest.approx(balanced_accuracy_score(yb, pb.argmax(1)))
        assert scores["macro_f1"][b] == pytest.approx(
            f1_score(yb, pb.argmax(1), labels=np.unique(yb), average="macro", zero_division=0))
        assert scores["macro_f1_all_classes"][b] == pytest.approx(
            f1_score(yb, pb.argmax(1), labels=[0, 1, 2], average="macro", zero_division=0))
        present = [c for c in range(3) if (yb == c).any() and (yb != c).any()]
        expected_auc = np.mean([roc_auc_score(yb == c, pb[:, c]) for c in present])
        assert scores["roc_auc"][b] == pytest.approx(expected_auc)
        assert scores["ece"][b] == pytest.approx(expected_calibration_error(yb, pb))


def test_resample_counts_keep_every_class_of_the_split() -> None:
    strata = np.array([0, 1, 1, 2, 2, 2])
    counts = resample_counts(strata, 2000, seed=0)
    assert counts.shape == (2000, 6)
    for s, size in ((0, 1), (1, 2), (2, 3)):
        assert (counts[:, strata == s].sum(axis=1) == size).all()


def test_bootstrap_resamples_whole_subjects() -> None:
    # Six subjects, one of them all wrong. Copying every subject's slice three times adds no information
    # when whole subjects are resampled: the intervals are identical. A bootstrap over slices would see
    # 18 independent rows instead of 6 and give narrower intervals.
    y1 = np.array([0, 1, 2, 0, 1, 2])
    probs1 = np.eye(3)[y1] * 0.9 + 0.1 / 3
    probs1[0] = np.eye(3)[1] * 0.9 + 0.1 / 3
    once = bootstrap_intervals(y1, probs1, np.arange(6), n_boot=500, seed=1)
    thrice = bootstrap_intervals(np.repeat(y1, 3), np.repeat(probs1, 3, axis=0), np.repeat(np.arange(6), 3),
                                 n_boot=500, seed=1)
    assert set(thrice) == set(once)
    for name, ci in once.items():
        assert thrice[name] == pytest.approx(ci, abs=1e-12), name
    assert once["accuracy"][0] < 5 / 6 < once["accuracy"][1]  # not degenerate: the one wrong subject is resampled
    assert thrice == bootstrap_intervals(np.repeat(y1, 3), np.repeat(probs1, 3, axis=0), np.repeat(np.arange(6), 3),
                                         n_boot=500, seed=1)  # same seed, same interval


def test_three_subjects_all_correct_get_an_exact_subject_interval() -> None:
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.eye(3)[y] * 0.9 + 0.1 / 3
    result = evaluate_split(y, probs, ["p1", "p1", "p2", "p2", "p3", "p3"], CLASSES, "test", n_boot=200)
    intervals = result.results["test_intervals"]
    # a bootstrap of three subjects, all correct, can only say [1, 1]; 3 of 3 has Clopper-Pearson [0.29, 1]
    assert intervals["subject"]["accuracy"] == pytest.approx([0.2924, 1.0], abs=1e-4)
    assert intervals["subject"]["balanced_accuracy"] == [None, None]
    assert intervals["few_subjects"] is True and "fewer than 10" in intervals["note"]
    assert intervals["n_subjects_per_class"] == {"a": 1, "b": 1, "c": 1}
    assert result.metrics["test_subject_accuracy"] == 1.0


def test_ten_subjects_per_class_are_bootstrapped_at_subject_level() -> None:
    y, probs, subjects = _random_predictions(n_subjects=30, slices=2)
    intervals = evaluate_split(y, probs, subjects, CLASSES, "test", n_boot=200).results["test_intervals"]
    assert intervals["few_subjects"] is False and intervals["note"] is None
    lo, hi = intervals["subject"]["balanced_accuracy"]
    assert lo is not None and hi is not None and 0.05 < hi - lo < 0.6


def test_an_absent_class_does_not_lower_macro_scores_of_perfect_predictions() -> None:
    y = np.array([0, 0, 1, 1, 0, 1])
    probs = np.eye(3)[y] * 0.9 + 0.1 / 3  # class c is in the model but not in this split
    result = evaluate_split(y, probs, [f"s{i}" for i in range(6)], CLASSES, "test", n_boot=100)
    m = result.metrics
    for key in ("macro_precision", "macro_recall", "macro_f1"):
        assert m[f"test_{key}"] == 1.0
        assert m[f"test_{key}_all_classes"] == pytest.approx(2 / 3)  # the old value, under its own name
    assert result.results["test_intervals"]["slice"]["macro_f1"] == [1.0, 1.0]


def test_subject_level_is_omitted_when_a_subject_has_two_labels() -> None:
    y = np.array([0, 1, 1, 1, 0, 0])
    probs = np.eye(2)[y] * 0.8 + 0.1
    result = evaluate_split(y, probs, ["p1", "p1", "p2", "p2", "p3", "p3"], ["x", "y"], "test", n_boot=50)
    assert "test_balanced_accuracy" in result.metrics
    assert not [k for k in result.metrics if k.startswith("test_subject_")]
    assert set(result.confusion) == {"slice"}
    intervals = result.results["test_intervals"]
    assert intervals["subject"] is None and "1 of 3 subjects" in intervals["reason"]
    assert "subject" not in result.results["test_reliability"] and "subject" not in result.results["test_roc"]


def test_ece_on_hand_made_confidences() -> None:
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.8, 0.2], [0.8, 0.2], [0.8, 0.2], [0.8, 0.2]])  # 80% sure, right half the time
    assert expected_calibration_error(y, probs) == pytest.approx(0.3)
    result = evaluate_split(y, probs, ["s1", "s2", "s3", "s4"], ["x", "y"], "val", n_boot=10)
    bins = result.results["val_reliability"]["slice"]
    assert len(bins) == 1 and bins[0]["count"] == 4 and bins[0]["accuracy"] == 0.5
    assert bins[0]["confidence"] == pytest.approx(0.8)


def test_a_class_absent_from_the_split_gets_no_roc_auc() -> None:
    y, probs, subjects = _random_predictions()
    keep = y != 2  # class c never appears
    result = evaluate_split(y[keep], probs[keep], [s for s, k in zip(subjects, keep) if k], CLASSES, "test", n_boot=100)
    m = result.metrics
    assert "test_roc_auc/a" in m and "test_roc_auc/c" not in m
    assert m["test_roc_auc"] == pytest.approx(np.mean([m["test_roc_auc/a"], m["test_roc_auc/b"]]))
    assert set(result.results["test_roc"]["slice"]) == {"a", "b"}
    lo, hi = result.results["test_intervals"]["slice"]["roc_auc"]
    assert lo is not None and lo < m["test_roc_auc"] < hi <= 1.0  # over the two classes present: never NaN


# -- cli.py evaluate: a fine-tuned model on an external folder --------------------------------------


def test_evaluate_an_external_folder_with_bad_files(synth_tumor, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import shutil

    from sslmri_core.store.writer import RunStore
    from bad_files import write_corpus

    db, out = f"sqlite:///{tmp_path / 'runs.db'}", str(tmp_path / "runs")
    code, ft, err = _invoke(["finetune", "--data", str(synth_tumor), "--init", "scratch", "--model", "test_resnet",
                             "--image-size", "64", "--batch-size", "8", "--epochs", "1", "--bootstrap", "20",
                             "--no-progress", "--db", db, "--out", out, "--json"])
    assert code == 0, err

    # an external folder: the model's four classes (copied synthetic slices) plus the bad-file corpus
    external = tmp_path / "external"
    expected = write_corpus(external)  # glioma/, notumor/ (and an empty meningioma/) with good and bad files
    for cls in ("meningioma", "pituitary", "glioma", "notumor"):
        for src in sorted((synth_tumor / cls).glob("*_slice-*.png"))[:2]:
            if not src.name.endswith("_mask.png"):
                (external / cls).mkdir(exist_ok=True)
                shutil.copy(src, external / cls / src.name)
    code, ev, err = _invoke(["evaluate", "--run", str(ft["run_id"]), "--data", str(external), "--db", db, "--json"])
    assert code == 0, err
    assert ev["files"] == ev["usable"] + len(ev["unusable"])
    bad = {u["path"].split("external/", 1)[1]: u["reason"] for u in ev["unusable"]}
    assert set(bad) == {p for p, why in expected.items() if why is not None}
    store = RunStore(db)
    run = store.get_run(ev["run_id"])
    assert run.kind == "evaluate" and run.parent_run_id == ft["run_id"] and run.status == "finished"
    m = store.final_metrics(run.id)
    assert "test_balanced_accuracy" in m and "test_subject_balanced_accuracy" in m
    assert "test_intervals" in store.results(run.id)
    from sslmri_core.store.queries import predictions_frame

    preds = predictions_frame(db, run.id)
    # the NaN NIfTI volume (one file) gives 6 slices; copies of the model's own training images are left out
    assert len(preds) == ev["usable"] - 1 + 6 - ev["overlap_excluded"]


def test_evaluate_refuses_unknown_classes_and_non_model_runs(synth_tumor, tmp_path) -> None:  # type: ignore[no-untyped-def]
    db, out = f"sqlite:///{tmp_path / 'runs.db'}", str(tmp_path / "runs")
    code, ft, err = _invoke(["finetune", "--data", str(synth_tumor), "--init", "scratch", "--model", "test_resnet",
                             "--image-size", "64", "--batch-size", "8", "--epochs", "1", "--bootstrap", "0",
                             "--no-progress", "--db", db, "--out", out, "--json"])
    assert code == 0, err
    import shutil

    odd = tmp_path / "odd"
    shutil.copytree(synth_tumor, odd)
    (odd / "glioma").rename(odd / "astrocytoma")
    code, _, err = _invoke(["evaluate", "--run", str(ft["run_id"]), "--data", str(odd), "--db", db])
    assert code == 2 and "'astrocytoma'" in err and "not among the model's classes" in err
    # another collection's folder names are mapped onto the model's classes, not renamed by hand
    code, ev, err = _invoke(["evaluate", "--run", str(ft["run_id"]), "--data", str(odd), "--class-map",
                             "astrocytoma=glioma", "--db", db, "--json"])
    assert code == 0, err
    assert ev["usable"] == 40 and ev["usable"] - ev["overlap_excluded"] > 0
    shutil.rmtree(odd / "astrocytoma")
    code, _, err = _invoke(["evaluate", "--run", str(ft["run_id"]), "--data", str(odd), "--db", db])
    assert code == 2 and "'glioma'" in err and "no usable images of the model's class" in err
    code, _, err = _invoke(["evaluate", "--run", "999", "--data", str(synth_tumor), "--db", db])
    assert code == 2 and "--run 999" in err
