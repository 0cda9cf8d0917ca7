"""Subject-level splits and nested label budgets."""

import numpy as np
import pytest

from sslmri_core.splits import label_subset, split_by_subject


def _dataset(n_subjects_per_class: int = 10, slices: int = 5, classes: int = 3) -> tuple[list[int], list[str]]:
    labels, subjects = [], []
    for c in range(classes):
        for s in range(n_subjects_per_class):
            labels += [c] * slices
            subjects += [f"sub-c{c}s{s}"] * slices
    return labels, subjects


@pytest.mark.parametrize("seed", range(5))
def test_no_subject_on_two_sides(seed: int) -> None:
    labels, subjects = _dataset()
    split = split_by_subject(labels, subjects, seed=seed)
    sides = [{subjects[i] for i in idx} for idx in (split.train, split.val, split.test)]
    assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
    assert split.level == "subject"
    assert sorted(np.concatenate([split.train, split.val, split.test]).tolist()) == list(range(len(labels)))


def test_proportions_and_stratification() -> None:
    labels, subjects = _dataset(n_subjects_per_class=20)
    split = split_by_subject(labels, subjects, seed=1)
    for name, share in (("train", 0.7), ("val", 0.15), ("test", 0.15)):
        idx = getattr(split, name)
        assert len(idx) / len(labels) == pytest.approx(share, abs=0.02)
        assert set(np.asarray(labels)[idx]) == {0, 1, 2}  # every class on every side


def test_deterministic_for_a_seed_and_different_across_seeds() -> None:
    labels, subjects = _dataset()
    a, b, c = (split_by_subject(labels, subjects, seed=s) for s in (3, 3, 4))
    assert a.test.tolist() == b.test.tolist()
    assert a.test.tolist() != c.test.tolist()


def test_without_subject_ids_the_split_is_image_level() -> None:
    labels = [0] * 20 + [1] * 20
    split = split_by_subject(labels, [None] * 40, seed=0)
    assert split.level == "image"
    assert len(split.train) + len(split.val) + len(split.test) == 40


def test_label_fractions_are_nested_and_by_subject() -> None:
    labels, subjects = _dataset(n_subjects_per_class=20)
    split = split_by_subject(labels, subjects, seed=0)
    chosen = {f: set(label_subset(split.train, labels, subjects, f, seed=0).tolist()) for f in (0.05, 0.1, 0.5, 1.0)}
    assert chosen[0.05] <= chosen[0.1] <= chosen[0.5] <= chosen[1.0] == set(split.train.tolist())
    for f, idx in chosen.items():
        picked = {subjects[i] for i in idx}
        # whole subjects only: every slice of a chosen subject is in the subset
        assert all(i in idx for i in split.train if subjects[i] in picked)
        assert {labels[i] for i in idx} == {0, 1, 2}  # at least one subject per class


def test_label_fraction_out_of_range() -> None:
    with pytest.raises(ValueError, match="label fraction"):
        label_subset(np.arange(3), [0, 1, 0], ["a", "b", "c"], 1.5)


def test_labels_per_class_by_subject_and_nested() -> None:
    labels, subjects = _dataset(n_subjects_per_class=20, slices=5)
    split = split_by_subject(labels, subjects, seed=0)
    small, large = (set(label_subset(split.train, labels, subjects, seed=2, per_class=n).tolist()) for n in (5, 25))
    assert small <= large
    counts = np.bincount(np.asarray(labels)[sorted(small)], minlength=3)
    assert (counts == 5).all()  # one whole 5-slice subject per class


def test_given_split_is_honoured() -> None:
    from sslmri_core.splits import make_split

    labels, subjects = _dataset(n_subjects_per_class=10)
    given = ["test" if int(s.split("s")[-1]) >= 8 else "train" for s in subjects]
    split = make_split(labels, subjects, given, seed=0, use_given=True)
    assert {given[i] for i in split.test} == {"test"} and len(split.test) == given.count("test")
    assert {given[i] for i in np.concatenate([split.train, split.val])} == {"train"}
    train_subjects = {subjects[i] for i in split.train}
    assert not train_subjects & {subjects[i] for i in split.val}
    with pytest.raises(ValueError, match="no Testing"):
        make_split(labels, subjects, ["train"] * len(labels), use_given=True)


def test_without_subjects_exact_duplicates_stay_on_one_side() -> None:
    labels = [0] * 30 + [1] * 30
    hashes = [f"h{i % 20}" for i in range(60)]  # every content appears three times
    split = split_by_subject(labels, [None] * 60, seed=0, hashes=hashes)
    side = {}
    for name in ("train", "val", "test"):
        for i in getattr(split, name):
            assert side.setdefault(hashes[i], name) == name
    assert split.level == "image"
