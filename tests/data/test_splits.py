"""Splits by group (subject, else copies kept together), checked given splits, folds, nested label budgets."""

import io

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter

from sslmri_core.data.groups import Grouping, content_grouping
from sslmri_core.data.splits import LeakySplitError, check_folds, label_subset, make_split, split_fold, split_grouped


def _dataset(n_subjects_per_class: int = 10, slices: int = 5, classes: int = 3) -> tuple[list[int], list[str]]:
    labels, subjects = [], []
    for c in range(classes):
        for s in range(n_subjects_per_class):
            labels += [c] * slices
            subjects += [f"sub-c{c}s{s}"] * slices
    return labels, subjects


def _by_subject(subjects: list[str | None]) -> Grouping:
    return Grouping([f"subject:{s}" for s in subjects], "subject", 0, 0)


def _textures(n: int, seed: int = 0) -> np.ndarray:
    """``n`` smooth random 64 px images, uint8 ``(n, 64, 64)``: unrelated to each other."""
    rng = np.random.default_rng(seed)
    out = [gaussian_filter(rng.normal(size=(64, 64)), 3.0) for _ in range(n)]
    return np.stack([((x - x.min()) / (x.max() - x.min()) * 255).astype(np.uint8) for x in out])


def _jpeg_copy(img: np.ndarray, quality: int = 70) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"))


def _sides(split, groups: list[str]) -> list[set[str]]:
    return [{groups[i] for i in getattr(split, name)} for name in ("train", "val", "test")]


@pytest.mark.parametrize("seed", range(5))
def test_no_subject_on_two_sides(seed: int) -> None:
    labels, subjects = _dataset()
    split = split_grouped(labels, _by_subject(subjects), seed=seed)
    sides = _sides(split, subjects)
    assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
    assert split.level == "subject" and split.reasons == []
    assert sorted(np.concatenate([split.train, split.val, split.test]).tolist()) == list(range(len(labels)))


def test_proportions_follow_70_15_15_per_class() -> None:
    labels, subjects = _dataset(n_subjects_per_class=1000, slices=1, classes=2)
    split = split_grouped(labels, _by_subject(subjects), seed=1)
    y = np.asarray(labels)
    for name, share in (("train", 0.7), ("val", 0.15), ("test", 0.15)):
        idx = getattr(split, name)
        for c in (0, 1):
            assert (y[idx] == c).sum() / 1000 == pytest.approx(share, abs=0.06)  # 4 binomial SDs


def test_every_class_on_every_side_even_when_small() -> None:
    for seed in range(20):
        labels, subjects = _dataset(n_subjects_per_class=3, slices=2)
        split = split_grouped(labels, _by_subject(subjects), seed=seed)
        for name in ("train", "val", "test"):
            assert set(np.asarray(labels)[getattr(split, name)]) == {0, 1, 2}, (seed, name)


def test_a_class_of_one_or_two_subjects_trains_only() -> None:
    labels = [0] * 20 + [1, 1, 2, 2]
    subjects = [f"a{i}" for i in range(20)] + ["b0", "b0", "c0", "c1"]
    split = split_grouped(labels, _by_subject(subjects), seed=0)
    assert {labels[i] for i in np.concatenate([split.val, split.test])} == {0}


def test_deterministic_for_a_seed_and_different_across_seeds() -> None:
    labels, subjects = _dataset()
    a, b, c = (split_grouped(labels, _by_subject(subjects), seed=s) for s in (3, 3, 4))
    assert a.test.tolist() == b.test.tolist()
    assert a.test.tolist() != c.test.tolist()


def test_removing_one_file_moves_no_other_group() -> None:
    labels, subjects = _dataset(n_subjects_per_class=40, slices=1)
    full = split_grouped(labels, _by_subject(subjects), seed=0)
    side = dict(zip(subjects, full.assignment(len(labels))))
    for drop in (0, 17, 55, 119):
        rest = [i for i in range(len(labels)) if i != drop]
        fewer = split_grouped([labels[i] for i in rest], _by_subject([subjects[i] for i in rest]), seed=0)
        moved = [subjects[i] for i, s in zip(rest, fewer.assignment(len(rest))) if side[subjects[i]] != s]
        assert moved == []


def test_copies_and_re_encoded_copies_land_on_their_originals_side() -> None:
    originals = _textures(60)
    copies = np.stack([originals[i] for i in range(0, 60, 3)])  # byte-for-byte the same pixels
    reencoded = np.stack([_jpeg_copy(originals[i]) for i in range(1, 60, 3)])
    images = np.concatenate([originals, copies, reencoded])
    source = list(range(60)) + list(range(0, 60, 3)) + list(range(1, 60, 3))
    labels = [s % 2 for s in source]
    grouping = content_grouping([None] * len(images), images)
    assert grouping.level == "content" and grouping.n_groups == 60 and grouping.reasons()
    for seed in range(5):
        split = split_grouped(labels, grouping, seed=seed)
        where = split.assignment(len(images))
        for k in range(60, len(images)):
            assert where[k] == where[source[k]]
        assert split.reasons == grouping.reasons()


def test_a_file_without_subject_id_joins_its_copy_and_never_dissolves_the_subject_split() -> None:
    images = _textures(40)
    labels, subjects = [i % 2 for i in range(40)], [f"sub-{i // 2}" for i in range(40)]
    # a renamed copy of subject 3's slice, and one unrelated image, both without an id
    images = np.concatenate([images, images[6:7], _textures(1, seed=9)])
    labels, subjects = labels + [0, 1], subjects + [None, None]
    grouping = content_grouping(subjects, images)
    assert grouping.level == "mixed" and grouping.images_without_subject == 2
    assert grouping.keys[40] == "subject:sub-3" and grouping.unjoined_without_subject == 1
    split = split_grouped(labels, grouping, seed=0)
    sides = _sides(split, [s or "" for s in subjects])
    named = [side - {""} for side in sides]
    assert not (named[0] & named[1]) and not (named[0] & named[2]) and not (named[1] & named[2])
    assert split.level == "mixed" and "1 image(s) without a subject id" in split.reasons[0]


def test_blank_images_never_tie_subjects_together() -> None:
    images = np.concatenate([_textures(10), np.zeros((10, 64, 64), dtype=np.uint8)])
    subjects = [f"s{i}" for i in range(10)] * 2  # every subject has a blank slice
    grouping = content_grouping(subjects, images)
    assert grouping.n_groups == 10


def test_given_split_sharing_subjects_is_refused_with_counts_unless_allowed() -> None:
    labels, subjects = _dataset(n_subjects_per_class=10)
    given = ["test" if i % 5 == 0 else "train" for i in range(len(labels))]  # every subject on both sides
    with pytest.raises(LeakySplitError, match=r"30 subject\(s\) and 0 duplicate group\(s\) \(150 images\)"):
        make_split(labels, _by_subject(subjects), given, seed=0, use_given=True)
    split = make_split(labels, _by_subject(subjects), given, seed=0, use_given=True, allow_leaky=True)
    assert split.source == "given" and any("--allow-leaky-split" in r for r in split.reasons)


def test_a_clean_given_split_is_honoured() -> None:
    labels, subjects = _dataset(n_subjects_per_class=10)
    given = ["test" if int(s.split("s")[-1]) >= 8 else "train" for s in subjects]
    split = make_split(labels, _by_subject(subjects), given, seed=0, use_given=True)
    assert {given[i] for i in split.test} == {"test"} and len(split.test) == given.count("test")
    assert {given[i] for i in np.concatenate([split.train, split.val])} == {"train"}
    assert not {subjects[i] for i in split.train} & {subjects[i] for i in split.val}
    assert split.reasons == []
    with pytest.raises(ValueError, match="no Testing"):
        make_split(labels, _by_subject(subjects), ["train"] * len(labels), use_given=True)


def test_folds_test_every_group_exactly_once() -> None:
    labels, subjects = _dataset(n_subjects_per_class=5, slices=3)
    grouping = _by_subject(subjects)
    tested: list[str] = []
    for fold in range(5):
        split = split_fold(labels, grouping, 5, fold, seed=0)
        sides = _sides(split, subjects)
        assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
        assert len(split.val) > 0 and split.source == f"fold {fold + 1}/5"
        assert set(np.asarray(labels)[split.test]) == {0, 1, 2}  # stratified: 5 subjects per class, 5 folds
        tested += sorted(sides[2])
    assert sorted(tested) == sorted(set(subjects))


def test_impossible_fold_counts_are_one_line_errors() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        check_folds(1, 10)
    with pytest.raises(ValueError, match="more than the 10 groups"):
        check_folds(11, 10)


def test_label_fractions_are_nested_and_by_group() -> None:
    labels, subjects = _dataset(n_subjects_per_class=20)
    split = split_grouped(labels, _by_subject(subjects), seed=0)
    chosen = {f: set(label_subset(split.train, labels, split.groups, f, seed=0).tolist()) for f in (0.05, 0.1, 0.5, 1.0)}
    assert chosen[0.05] <= chosen[0.1] <= chosen[0.5] <= chosen[1.0] == set(split.train.tolist())
    assert chosen[0.05] < chosen[0.5]
    for f, idx in chosen.items():
        picked = {subjects[i] for i in idx}
        assert all(i in idx for i in split.train if subjects[i] in picked)  # whole subjects only
        assert {labels[i] for i in idx} == {0, 1, 2}  # at least one subject per class


def test_label_fraction_out_of_range() -> None:
    with pytest.raises(ValueError, match="label fraction"):
        label_subset(np.arange(3), [0, 1, 0], ["a", "b", "c"], 1.5)


def test_labels_per_class_by_group_and_nested() -> None:
    labels, subjects = _dataset(n_subjects_per_class=20, slices=5)
    split = split_grouped(labels, _by_subject(subjects), seed=0)
    small, large = (set(label_subset(split.train, labels, split.groups, seed=2, per_class=n).tolist()) for n in (5, 25))
    assert small <= large
    counts = np.bincount(np.asarray(labels)[sorted(small)], minlength=3)
    assert (counts == 5).all()  # one whole 5-slice subject per class


def test_split_unit_image_is_leaky_on_purpose() -> None:
    labels, subjects = _dataset(n_subjects_per_class=10, slices=5)
    split = split_grouped(labels, _by_subject(subjects), seed=0, unit="image")
    sides = _sides(split, subjects)
    assert sides[0] & sides[2]  # subjects straddle: that is the point of the leakage demonstration
    assert split.level == "image" and split.reasons
