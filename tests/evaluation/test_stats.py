"""The statistics module on hand-made prediction frames: stratified subject resampling, the experiment
summary's bootstrap (shared by seeds, paired across arms), exact intervals for few subjects."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score

from sslmri_core.evaluation import stats

CLASSES = ["a", "b"]


def _rows(arm: str, seed: int, subjects: Sequence[str], labels: Sequence[int], correct: Sequence[bool],
          fraction: float = 1.0, fold: int | None = None, steps: int | None = 300) -> list[dict]:
    """One prediction row per slice: ``subjects``/``labels``/``correct`` are per slice."""
    rows = []
    for i, (subject, label, ok) in enumerate(zip(subjects, labels, correct, strict=True)):
        pred = label if ok else 1 - label
        probs = [0.2, 0.2]
        probs[pred] = 0.8
        rows.append({"arm": arm, "fraction": fraction, "seed": seed, "fold": fold, "run_id": hash((arm, seed, fold)) % 997,
                     "scan": f"{subject}/slice-{i}.png", "subject": subject, "true_label": CLASSES[label],
                     "pred_label": CLASSES[pred], "probs": probs, "steps": steps})
    return rows


def _subjects(n_per_class: int, slices: int) -> tuple[list[str], list[int]]:
    """Per slice: subject name and label, ``n_per_class`` subjects of each class with ``slices`` slices each."""
    names, labels = [], []
    for c in range(2):
        for s in range(n_per_class):
            names += [f"s{c}{s:02d}"] * slices
            labels += [c] * slices
    return names, labels


def _row(out: dict, metric: str, arm: str, key: str = "summary", **match: object) -> dict:
    found = [r for r in out[key] if r["metric"] == metric and r["arm"] == arm
             and all(r[k] == v for k, v in match.items())]
    assert len(found) == 1, found
    return found[0]


def _width(ci: list[float | None]) -> float:
    assert ci[0] is not None and ci[1] is not None
    return ci[1] - ci[0]


# -- resampling ---------------------------------------------------------------------------------------
def test_a_stratified_resample_never_misses_a_class() -> None:
    strata = np.array([0] * 5 + [1] * 2 + [2])  # the third class has one subject
    counts = stats.resample_counts(strata, 5000, seed=0)
    for s, size in ((0, 5), (1, 2), (2, 1)):
        assert (counts[:, strata == s].sum(axis=1) == size).all()  # every resample keeps each class's size
    assert counts[:, strata == 0].std() > 0  # and still resamples within a class
    # the unstratified draw this replaces loses the one-subject class in about a third of the resamples
    plain = stats.resample_counts(len(strata), 5000, seed=0)
    assert 0.3 < (plain[:, strata == 2].sum(axis=1) == 0).mean() < 0.4
    np.testing.assert_array_equal(stats.resample_counts([7, 8, 9], 50), np.ones((50, 3)))


# -- the experiment summary -----------------------------------------------------------------------------
def test_summary_means_over_seeds_pools_folds_and_has_every_column() -> None:
    names, labels = _subjects(10, 3)
    rng = np.random.default_rng(0)
    rows, expected = [], {}
    fold_of = {s: int(s[1:]) % 2 for s in names}  # two folds, each testing half of each class
    for arm, p in (("ssl-full", 0.8), ("scratch", 0.6)):
        for seed in (0, 1):
            correct = rng.random(len(names)) < p
            expected[(arm, seed)] = balanced_accuracy_score(labels, np.where(correct, labels, 1 - np.array(labels)))
            for fold in (0, 1):
                keep = [fold_of[s] == fold for s in names]
                rows += _rows(arm, seed, *(np.array(v)[keep].tolist() for v in (names, labels, correct)), fold=fold,
                              steps=300 if arm == "scratch" or fold == 0 else 320)
    frame = pd.DataFrame(rows)
    out = stats.summarise_predictions(frame, classes=CLASSES, n_boot=300)
    ssl = _row(out, stats.SLICE_METRIC, "ssl-full")
    # folds are pooled (the balanced accuracy of all 20 subjects, not the mean of two folds'), then seeds averaged
    assert ssl["mean"] == pytest.approx((expected[("ssl-full", 0)] + expected[("ssl-full", 1)]) / 2)
    assert (ssl["n_seeds"], ssl["n_test_subjects"], ssl["n_test_subjects_per_class"]) == (2, 20, {"a": 10, "b": 10})
    assert ssl["steps"] == [300, 320] and _row(out, stats.SLICE_METRIC, "scratch")["steps"] == 300
    assert ssl["few_subjects"] is False and ssl["note"] is None and ssl["ci_method"] == stats.BOOTSTRAP_METHOD
    assert set(ssl) >= {"arm", "fraction", "metric", "mean", "ci", "n_seeds", "n_test_subjects",
                        "n_test_subjects_per_class", "steps"}
    accuracy = _row(out, stats.SUBJECT_ACCURACY, "ssl-full")
    assert accuracy["ci_method"] == stats.BOOTSTRAP_METHOD  # 10 subjects per class: no exact fallback
    paired = _row(out, stats.SLICE_METRIC, "ssl-full", "paired", baseline="scratch")
    diffs = [expected[("ssl-full", s)] - expected[("scratch", s)] for s in (0, 1)]
    assert paired["mean"] == pytest.approx(np.mean(diffs)) and paired["wins"] == sum(d > 0 for d in diffs)
    assert set(paired) >= {"arm", "baseline", "fraction", "metric", "mean", "ci", "n_seeds", "n_test_subjects", "wins"}
    assert paired["n_seeds"] == 2 and paired["n_test_subjects"] == 20
    assert out["pretraining"] == stats.PRETRAINING and "within each class" in out["interval"]
    assert stats.summarise_predictions(frame, classes=CLASSES, n_boot=300) == out  # seeded: the same every time


def test_three_subjects_all_correct_get_an_exact_interval_not_one_to_one() -> None:
    names, labels = ["p1", "p1", "p2", "p2", "p3", "p3"], [0, 0, 1, 1, 1, 1]
    frame = pd.DataFrame(_rows("scratch", 0, names, labels, [True] * 6) + _rows("scratch", 1, names, labels, [True] * 6))
    out = stats.summarise_predictions(frame, classes=CLASSES, n_boot=200)
    accuracy = _row(out, stats.SUBJECT_ACCURACY, "scratch")
    # 3 of 3 correct: Clopper-Pearson [0.292, 1], where a bootstrap of the three subjects gives [1, 1]
    assert accuracy["mean"] == 1.0 and accuracy["ci"] == pytest.approx([0.2924, 1.0], abs=1e-4)
    assert accuracy["ci_method"] == stats.EXACT_METHOD and accuracy["few_subjects"] is True
    assert "fewer than 10 test subjects" in accuracy["note"] and "a: 1, b: 2" in accuracy["note"]
    assert _row(out, stats.SUBJECT_BALANCED, "scratch")["ci"] == [None, None]  # no bootstrap of 3 subjects
    assert _row(out, stats.SLICE_METRIC, "scratch")["few_subjects"] is True


def test_exact_interval_uses_the_seed_mean_count_of_correct_subjects() -> None:
    names, labels = ["p1", "p2", "p3", "p4"], [0, 0, 1, 1]
    frame = pd.DataFrame(_rows("scratch", 0, names, labels, [True, True, True, False])
                         + _rows("scratch", 1, names, labels, [True, True, False, False]))
    row = _row(stats.summarise_predictions(frame, classes=CLASSES, n_boot=50), stats.SUBJECT_ACCURACY, "scratch")
    assert row["mean"] == pytest.approx(0.625)
    assert row["ci"] == pytest.approx(stats.clopper_pearson(3, 4))  # 2.5 correct rounds half up to 3, not to 2


def _correlated_and_independent(seed: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two arms on 20 + 20 subjects of 4 slices: each subject's slices all right or all wrong, and the same
    per-class counts of right slices shuffled across the slices of the class (no within-subject correlation)."""
    names, labels = _subjects(20, 4)
    rng = np.random.default_rng(seed)
    correlated, independent = [], []
    for arm, p in (("ssl-full", 0.75), ("scratch", 0.5)):
        per_subject = np.repeat(rng.random(40) < p, 4)
        shuffled = per_subject.copy()
        for c in range(2):
            idx = np.flatnonzero(np.array(labels) == c)
            shuffled[idx] = rng.permutation(per_subject[idx])
        correlated += _rows(arm, 0, names, labels, per_subject.tolist())
        independent += _rows(arm, 0, names, labels, shuffled.tolist())
    return pd.DataFrame(correlated), pd.DataFrame(independent)


def test_a_paired_interval_widens_when_a_subjects_slices_are_perfectly_correlated() -> None:
    correlated, independent = _correlated_and_independent()
    wide, narrow = (_row(stats.summarise_predictions(f, classes=CLASSES, n_boot=1000), stats.SLICE_METRIC,
                         "ssl-full", "paired", baseline="scratch") for f in (correlated, independent))
    assert wide["mean"] == pytest.approx(narrow["mean"])  # the same slice counts per class: the same estimate
    # 40 subjects vs 160 effectively independent slices: about twice as wide (a slice bootstrap: about equal)
    assert _width(wide["ci"]) > 1.5 * _width(narrow["ci"])


def test_a_paired_interval_is_narrower_than_either_arm_when_the_arms_share_subject_difficulty() -> None:
    names, labels = _subjects(20, 2)
    subject = np.array([int(n[2:]) for n in names])
    easy = subject < 10  # both arms get these right; ssl also gets subject 10 of each class
    frame = pd.DataFrame(_rows("ssl-full", 0, names, labels, (subject < 11).tolist())
                         + _rows("scratch", 0, names, labels, easy.tolist()))
    out = stats.summarise_predictions(frame, classes=CLASSES, n_boot=1000)
    paired = _row(out, stats.SLICE_METRIC, "ssl-full", "paired", baseline="scratch")
    assert paired["mean"] == pytest.approx(0.05) and paired["wins"] == 1
    # the same resample for both arms cancels the shared difficulty; independent resamples would be ~1.4x wider
    for arm in ("ssl-full", "scratch"):
        assert _width(paired["ci"]) < 0.6 * _width(_row(out, stats.SLICE_METRIC, arm)["ci"])


def test_subject_level_metrics_only_where_every_subject_has_one_label() -> None:
    names, labels = _subjects(12, 2)
    labels[1] = 1  # subject s000 has a class-a and a class-b slice (an MS patient: lesion and lesion-free slices)
    frame = pd.DataFrame(_rows("scratch", 0, names, labels, [True] * len(names)))
    out = stats.summarise_predictions(frame, classes=CLASSES, n_boot=100)
    assert {r["metric"] for r in out["summary"]} == {stats.SLICE_METRIC}
    assert out["subject_level"] is False and "vary within" in out["subject_level_reason"]
    row = out["summary"][0]
    assert row["n_test_subjects_per_class"] == {"a": 12, "b": 13}  # s000 counts for both classes
    assert row["ci"] == [1.0, 1.0]  # a resample keeps the mixed subject's stratum: both classes always present


def test_class_order_comes_from_attrs_and_a_mismatch_is_refused() -> None:
    frame = pd.DataFrame(_rows("scratch", 0, ["p1", "p2"], [0, 1], [True, False]))
    frame.attrs["classes"] = ["a", "b", "c"]
    with pytest.raises(ValueError, match="2 class probabilities but 3 classes"):
        stats.summarise_predictions(frame)
    assert stats.summarise_predictions(frame.iloc[0:0])["summary"] == []


def test_images_without_subject_ids_are_their_own_subjects_and_still_pair_across_arms() -> None:
    names, labels = _subjects(6, 1)
    rows = _rows("ssl-full", 0, names, labels, [True] * 12) + _rows("scratch", 0, names, labels, [True] * 6 + [False] * 6)
    frame = pd.DataFrame(rows).assign(subject=None)
    out = stats.summarise_predictions(frame, classes=CLASSES, n_boot=200)
    assert {r["metric"] for r in out["summary"]} == {stats.SLICE_METRIC}  # no subject level to repeat the image level
    assert "no subject id" in out["subject_level_reason"]
    paired = _row(out, stats.SLICE_METRIC, "ssl-full", "paired", baseline="scratch")
    assert paired["n_test_subjects"] == 12  # the same scan in both arms is one unit, not two
    assert paired["mean"] == pytest.approx(0.5) and paired["ci"] == pytest.approx([0.5, 0.5])  # every b wrong, every a right


def test_without_subject_ids_copies_of_one_image_are_one_resampling_unit() -> None:
    names, labels = _subjects(12, 2)  # 48 images without ids: 24 pairs of copies (one content group each)
    copies_agree = [(i // 2) % 3 > 0 for i in range(48)]  # a copy is predicted like its original
    rows = _rows("ssl-full", 0, names, labels, [True] * 48) + _rows("scratch", 0, names, labels, copies_agree)
    frame = pd.DataFrame(rows).assign(group=lambda f: "content:" + f["subject"], subject=None)
    out = stats.summarise_predictions(frame, classes=CLASSES, n_boot=300)
    row = _row(out, stats.SLICE_METRIC, "scratch")
    assert row["n_test_subjects"] == 24  # the 48 scans are 24 groups of copies: a scan-level count would say 48
    by_scan = stats.summarise_predictions(frame.assign(group=None), classes=CLASSES, n_boot=300)
    assert _row(by_scan, stats.SLICE_METRIC, "scratch")["n_test_subjects"] == 48
    assert _width(row["ci"]) > _width(_row(by_scan, stats.SLICE_METRIC, "scratch")["ci"])  # copies are not evidence
