"""Statistics of test results, one home for a run's evaluation, the CLI experiment summary and the dashboard.

The unit of resampling is the test *subject* (slices of one patient are not independent), drawn with
replacement *within each class* (stratified), so every resample keeps every class the test split has
and its class balance. A resample is a vector of per-subject draw counts: scoring it is a few matrix
products of a ``(B, N)`` weight matrix with per-row quantities, all resamples at once.

An experiment summary (:func:`summarise_predictions`) takes per-scan test predictions of every arm x
label fraction x seed (folds pooled) and gives, per arm and fraction, the mean over seeds with a 95%
percentile bootstrap over test subjects, and for each SSL arm minus each baseline the paired version
(one resample for both arms and all seeds). With fewer than :data:`MIN_SUBJECTS_PER_CLASS` test subjects
in a class a row says so; subject accuracy then gets an exact Clopper-Pearson interval (a bootstrap of
3 subjects, all correct, gives [1, 1]) and the other subject-level metrics get none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from sslmri_core.config import ARMS, BASELINE_ARMS, SSL_ARMS

LEVEL = 0.95
MIN_SUBJECTS_PER_CLASS = 10
# Metrics with bootstrap intervals (names without the split prefix); macro scores over the classes present.
INTERVAL_METRICS = ("accuracy", "balanced_accuracy", "macro_precision", "macro_recall", "macro_f1", "roc_auc", "ece",
                    "macro_precision_all_classes", "macro_recall_all_classes", "macro_f1_all_classes")
# The experiment summary's metrics: slice level (primary), then subject level where each subject has one label.
SLICE_METRIC = "test_balanced_accuracy"
SUBJECT_BALANCED = "test_subject_balanced_accuracy"
SUBJECT_ACCURACY = "test_subject_accuracy"
SUMMARY_METRICS = (SLICE_METRIC, SUBJECT_BALANCED, SUBJECT_ACCURACY)
ARM_ORDER = ARMS
BOOTSTRAP_METHOD = "stratified subject bootstrap"
EXACT_METHOD = "exact Clopper-Pearson"
INTERVAL = (
    "95% percentile bootstrap over test subjects, resampled with replacement within each class (a subject's "
    "slices come along); one resample is shared by every seed and arm and the metric is averaged over seeds, "
    "so SSL-minus-baseline rows are a paired bootstrap. With fewer than 10 test subjects in a class, subject "
    "accuracy gets an exact Clopper-Pearson interval of the seed-mean count of correct subjects and the other "
    "subject-level metrics get none"
)
PRETRAINING = "one SSL pretraining run per fold/split: its randomness is not in these intervals"
FRAME_COLUMNS = ["arm", "fraction", "seed", "fold", "run_id", "scan", "subject", "group", "true_label", "pred_label",
                 "probs"]


# -- resampling ---------------------------------------------------------------------------------------
def resample_counts(strata: np.ndarray | Sequence[Any] | int, n_boot: int, seed: int = 0) -> np.ndarray:
    """``(n_boot, G)`` draw counts of ``G`` groups: each stratum's groups drawn with replacement as often
    as it has groups, so every resample keeps each stratum's size.

    ``strata`` ``(G,)`` labels each group (e.g. its class); an int ``G`` means ``G`` groups, one stratum.
    """
    keys = np.zeros(strata, dtype=np.int64) if isinstance(strata, (int, np.integer)) else np.asarray(strata)
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_boot, len(keys)))
    if len(keys) == 0:
        return counts
    _, which = np.unique(keys, return_inverse=True)
    for s in range(int(which.max()) + 1):
        members = np.flatnonzero(which == s)
        counts[:, members] = rng.multinomial(len(members), np.full(len(members), 1.0 / len(members)), size=n_boot)
    return counts


def label_presence(y_true: np.ndarray, group: np.ndarray, n_groups: int, k: int) -> np.ndarray:
    """``(G, K)`` bool: which classes each group's rows carry."""
    presence = np.zeros((n_groups, k), dtype=bool)
    presence[group, np.asarray(y_true, dtype=np.int64)] = True
    return presence


def group_strata(presence: np.ndarray) -> np.ndarray:
    """Stratum index per group ``(G,)``: its set of labels (its class where it has one label)."""
    if len(presence) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.unique(presence, axis=0, return_inverse=True)[1].reshape(-1)


def subjects_per_class(presence: np.ndarray, classes: Sequence[str]) -> dict[str, int]:
    """Groups with at least one row of each class present (a class with none is left out)."""
    counts = presence.sum(axis=0)
    return {str(c): int(n) for c, n in zip(classes, counts, strict=True) if n > 0}


def few_subjects_note(per_class: dict[str, int]) -> str | None:
    """A sentence naming the classes with fewer than :data:`MIN_SUBJECTS_PER_CLASS` test subjects, else None."""
    few = {c: n for c, n in per_class.items() if n < MIN_SUBJECTS_PER_CLASS}
    if not few:
        return None
    listed = ", ".join(f"{c}: {n}" for c, n in few.items())
    return (f"fewer than {MIN_SUBJECTS_PER_CLASS} test subjects in a class ({listed}): a bootstrap over so few "
            "subjects is too narrow; subject accuracy uses an exact interval, other subject-level metrics none")


# -- weighted scores (one row of weights = one resample) ------------------------------------------------
def onehot(index: np.ndarray, k: int) -> np.ndarray:
    """``(N, K)`` one-hot rows of class indices ``(N,)``."""
    out = np.zeros((len(index), k), dtype=np.float64)
    out[np.arange(len(index)), np.asarray(index, dtype=np.int64)] = 1.0
    return out


def bin_index(conf: np.ndarray, n_bins: int) -> np.ndarray:
    """Confidence bin per row ``(N,)``: ``(lo, hi]`` bins as in the usual ECE; 0 goes to the first bin."""
    return np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)


def _class_counts(y_true: np.ndarray, y_pred: np.ndarray, w: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    """Weighted true positives, support and predicted count per class, each ``(B, K)``."""
    truth, pred = onehot(y_true, k), onehot(y_pred, k)
    return w @ (truth * pred), w @ truth, w @ pred


def _macro(values: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Mean of ``values`` ``(B, K)`` over the classes marked in ``present`` ``(B, K)``; NaN where none."""
    n = present.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (values * present).sum(axis=1) / n, np.nan)


def weighted_balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray, w: np.ndarray, k: int) -> np.ndarray:
    """Balanced accuracy ``(B,)`` (mean recall over the classes present) for each weight row of ``w`` ``(B, N)``."""
    tp, support, _ = _class_counts(y_true, y_pred, w, k)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, tp / support, 0.0)
    return _macro(recall, support > 0)


def weighted_accuracy(y_true: np.ndarray, y_pred: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Accuracy ``(B,)`` for each weight row of ``w`` ``(B, N)``."""
    correct = (np.asarray(y_true) == np.asarray(y_pred)).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (w @ correct) / w.sum(axis=1)


def _weighted_auc(scores: np.ndarray, positive: np.ndarray, w: np.ndarray) -> np.ndarray:
    """ROC-AUC of ``scores`` ``(N,)`` for every weight row of ``w`` ``(B, N)`` (ties count one half)."""
    if len(scores) == 0:
        return np.full(len(w), np.nan)
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])  # one per distinct score
    ws = w[:, order]
    pos_w = np.add.reduceat(ws * positive[order], starts, axis=1)  # (B, U) positive weight per score, ascending
    neg_w = np.add.reduceat(ws * ~positive[order], starts, axis=1)
    below = np.cumsum(neg_w, axis=1) - neg_w  # negative weight strictly below each score
    total = pos_w.sum(axis=1) * neg_w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (pos_w * (below + 0.5 * neg_w)).sum(axis=1) / total, np.nan)


def weighted_scores(y_true: np.ndarray, probs: np.ndarray, w: np.ndarray, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Every :data:`INTERVAL_METRICS` metric ``(B,)`` for each row of weights ``w`` ``(B, N)``.

    A weight is how often a row is drawn, so with ``w`` all ones this equals scikit-learn on the plain
    data: macro precision / recall / F1 over the classes present in ``y_true`` (``_all_classes``: over
    all K, 0 for an empty class), balanced accuracy over the classes present, ROC-AUC over the classes
    with both positives and negatives.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    k = probs.shape[1]
    y_pred = probs.argmax(axis=1)
    tp, support, predicted = _class_counts(y_true, y_pred, w, k)
    correct = (y_true == y_pred).astype(np.float64)
    present, every = support > 0, np.ones_like(support, dtype=bool)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, tp / support, 0.0)
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        denom = support + predicted  # 2TP + FP + FN
        f1 = np.where(denom > 0, 2 * tp / denom, 0.0)
        auc = np.stack([_weighted_auc(probs[:, c], y_true == c, w) for c in range(k)], axis=1)
        conf = probs.max(axis=1)
        bins = onehot(bin_index(conf, n_bins), n_bins)
        ece = np.abs(w @ (bins * correct[:, None]) - w @ (bins * conf[:, None])).sum(axis=1) / w.sum(axis=1)
        return {
            "accuracy": (w @ correct) / w.sum(axis=1),
            "balanced_accuracy": _macro(recall, present),
            "macro_precision": _macro(precision, present),
            "macro_recall": _macro(recall, present),
            "macro_f1": _macro(f1, present),
            "roc_auc": _macro(np.nan_to_num(auc), np.isfinite(auc)),
            "ece": ece,
            "macro_precision_all_classes": _macro(precision, every),
            "macro_recall_all_classes": _macro(recall, every),
            "macro_f1_all_classes": _macro(f1, every),
        }


def percentile_interval(values: np.ndarray, level: float = LEVEL) -> list[float | None]:
    """Percentile interval of the finite replicate values ``(B,)``; ``[None, None]`` when there are none."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if not len(finite):
        return [None, None]
    tail = 100 * (1 - level) / 2
    return [float(np.percentile(finite, tail)), float(np.percentile(finite, 100 - tail))]


def clopper_pearson(k: int, n: int, level: float = LEVEL) -> list[float | None]:
    """Exact binomial interval of ``k`` successes in ``n`` trials; ``[None, None]`` when ``n`` is 0."""
    from scipy.stats import binomtest

    if n <= 0:
        return [None, None]
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="exact")
    return [float(ci.low), float(ci.high)]


def bootstrap_intervals(
    y_true: np.ndarray, probs: np.ndarray, group: np.ndarray, n_boot: int = 1000, seed: int = 0,
    n_bins: int = 15, counts: np.ndarray | None = None,
) -> dict[str, list[float | None]]:
    """Percentile 95% intervals of every :data:`INTERVAL_METRICS` metric, resampling groups (subjects)
    stratified by their labels.

    ``group`` ``(N,)`` maps each row to its subject (0..G-1); every row of a drawn subject comes along.
    ``counts`` ``(B, G)`` reuses a resample (default: :func:`resample_counts` of the groups' label sets).
    A resample where a metric is undefined is left out of that metric's interval.
    """
    n_groups = int(group.max()) + 1 if len(group) else 0
    if n_groups == 0 or n_boot <= 0:
        return {m: [None, None] for m in INTERVAL_METRICS}
    if counts is None:
        strata = group_strata(label_presence(y_true, group, n_groups, probs.shape[1]))
        counts = resample_counts(strata, n_boot, seed)
    scores = weighted_scores(y_true, probs, counts[:, group], n_bins)
    return {name: percentile_interval(values) for name, values in scores.items()}


# -- the experiment summary ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _Prepared:
    """A prediction frame as arrays: class index per row, subject (group) per row, the shared resample."""

    frame: pd.DataFrame
    classes: list[str]
    y: np.ndarray  # (N,) true class
    pred: np.ndarray  # (N,) predicted class
    probs: np.ndarray  # (N, K)
    group: np.ndarray  # (N,) subject index 0..G-1 (a row without a subject is its own, keyed by scan)
    presence: np.ndarray  # (G, K) classes each subject carries
    subject_level: str | None  # why there are no subject-level metrics; None: there are
    counts: np.ndarray  # (B, G) the one stratified resample every cell uses


@dataclass(frozen=True)
class _CellScores:
    """One arm x fraction x seed (folds pooled): per metric the point value and its ``(B,)`` replicates."""

    point: dict[str, float]
    reps: dict[str, np.ndarray]
    groups: np.ndarray  # subjects tested
    correct_subjects: int


def frame_classes(frame: pd.DataFrame, classes: Sequence[str] | None = None) -> list[str]:
    """The class order of ``probs``: ``classes``, else ``frame.attrs['classes']``, else the sorted labels
    (the order finetune stores); checked against the width of ``probs``."""
    found = list(classes or frame.attrs.get("classes") or sorted({*frame["true_label"], *frame["pred_label"]}))
    width = len(frame["probs"].iloc[0]) if len(frame) else len(found)
    if width != len(found):
        raise ValueError(f"predictions have {width} class probabilities but {len(found)} classes: {found}")
    return [str(c) for c in found]


def _prepare(frame: pd.DataFrame, classes: Sequence[str] | None, n_boot: int, seed: int) -> _Prepared:
    names = frame_classes(frame, classes)
    index = {c: i for i, c in enumerate(names)}
    y = frame["true_label"].map(index).to_numpy(dtype=np.int64)
    pred = frame["pred_label"].map(index).to_numpy(dtype=np.int64)
    probs = np.asarray(frame["probs"].tolist(), dtype=np.float64).reshape(len(frame), len(names))
    # The resampling unit: the subject, else the scan's split group (copies of one image count once), else the scan.
    fallback = "scan:" + frame["scan"].astype(str)
    if "group" in frame:
        fallback = ("group:" + frame["group"].astype(str)).where(frame["group"].notna(), fallback)
    keys = frame["subject"].astype(object).where(frame["subject"].notna(), fallback)
    group = pd.factorize(keys.astype(str))[0].astype(np.int64)
    presence = label_presence(y, group, int(group.max()) + 1 if len(group) else 0, len(names))
    counts = resample_counts(group_strata(presence), max(n_boot, 0), seed)
    return _Prepared(frame, names, y, pred, probs, group, presence, _no_subject_level(frame, presence), counts)


def _no_subject_level(frame: pd.DataFrame, presence: np.ndarray) -> str | None:
    """Why the frame gets no subject-level metrics (None: it does)."""
    if frame["subject"].isna().any():
        return "no subject id on some test images: the subject level would repeat the image level"
    if not (presence.sum(axis=1) == 1).all():
        return "labels vary within a test subject: slice-level metrics only"
    return None


def _subject_level(p: _Prepared, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The cell's subjects ``(S,)``, their labels ``(S,)`` and predictions ``(S,)`` (argmax of mean slice probs)."""
    groups, inverse = np.unique(p.group[rows], return_inverse=True)
    sums = np.zeros((len(groups), len(p.classes)))
    np.add.at(sums, inverse, p.probs[rows])
    return groups, p.presence[groups].argmax(axis=1), sums.argmax(axis=1)


def _cell_scores(p: _Prepared, rows: np.ndarray) -> _CellScores:
    k, ones = len(p.classes), np.ones((1, len(rows)))
    w = p.counts[:, p.group[rows]]
    point = {SLICE_METRIC: float(weighted_balanced_accuracy(p.y[rows], p.pred[rows], ones, k)[0])}
    reps = {SLICE_METRIC: weighted_balanced_accuracy(p.y[rows], p.pred[rows], w, k)}
    groups, y_subj, pred_subj = _subject_level(p, rows)
    correct = int((y_subj == pred_subj).sum())
    if p.subject_level is None:
        ws, unit = p.counts[:, groups], np.ones((1, len(groups)))
        point[SUBJECT_BALANCED] = float(weighted_balanced_accuracy(y_subj, pred_subj, unit, k)[0])
        reps[SUBJECT_BALANCED] = weighted_balanced_accuracy(y_subj, pred_subj, ws, k)
        point[SUBJECT_ACCURACY] = correct / len(groups)
        reps[SUBJECT_ACCURACY] = weighted_accuracy(y_subj, pred_subj, ws)
    return _CellScores(point, reps, groups, correct)


def _cells(p: _Prepared) -> dict[tuple[str, float, int], _CellScores]:
    """Scores of every arm x fraction x seed; the test predictions of all folds of a cell are pooled."""
    keys = p.frame[["arm", "fraction", "seed"]].astype({"fraction": "float64", "seed": "int64"})
    out = {}
    for (arm, fraction, seed), idx in keys.groupby(["arm", "fraction", "seed"], sort=True).indices.items():
        out[(str(arm), float(fraction), int(seed))] = _cell_scores(p, np.asarray(idx))
    return out


def _arm_rank(arm: str) -> tuple[int, str]:
    return (ARM_ORDER.index(arm) if arm in ARM_ORDER else len(ARM_ORDER), arm)


def _steps(frame: pd.DataFrame, arm: str, fraction: float) -> int | list[int] | None:
    """The children's ``optimizer_steps``: one number when they agree, the sorted distinct values if not."""
    if "steps" not in frame:
        return None
    rows = frame[(frame["arm"] == arm) & (frame["fraction"].astype("float64") == fraction)]
    values = sorted({int(v) for v in pd.to_numeric(rows["steps"], errors="coerce").dropna()})
    return None if not values else values[0] if len(values) == 1 else values


def _interval(
    p: _Prepared, metric: str, reps: np.ndarray, few: bool, exact: tuple[int, int] | None
) -> tuple[list[float | None], str | None]:
    """A row's interval and its method: exact for subject accuracy with few subjects, none for the other
    subject-level metrics then, else the stratified bootstrap."""
    if few and metric == SUBJECT_ACCURACY and exact is not None:
        return clopper_pearson(*exact), EXACT_METHOD
    if (few and metric != SLICE_METRIC) or len(p.counts) == 0:
        return [None, None], None
    return percentile_interval(reps), BOOTSTRAP_METHOD


def _row_counts(p: _Prepared, cells: list[_CellScores]) -> tuple[int, dict[str, int], str | None]:
    groups = np.unique(np.concatenate([c.groups for c in cells]))
    per_class = subjects_per_class(p.presence[groups], p.classes)
    return len(groups), per_class, few_subjects_note(per_class)


def _summary_rows(p: _Prepared, cells: dict[tuple[str, float, int], _CellScores]) -> list[dict[str, Any]]:
    rows = []
    for metric in SUMMARY_METRICS:
        for arm, fraction in sorted({(a, f) for a, f, _ in cells}, key=lambda af: (_arm_rank(af[0]), af[1])):
            mine = [c for (a, f, _), c in sorted(cells.items()) if a == arm and f == fraction and metric in c.point]
            if not mine:
                continue
            n_subjects, per_class, note = _row_counts(p, mine)
            # the seed-mean count of correct subjects, rounded half up (round() would round 2.5 to 2)
            exact = (int(np.floor(np.mean([c.correct_subjects for c in mine]) + 0.5)), n_subjects)
            reps = np.mean([c.reps[metric] for c in mine], axis=0)
            ci, method = _interval(p, metric, reps, note is not None, exact)
            rows.append({"arm": arm, "fraction": fraction, "metric": metric,
                         "mean": float(np.mean([c.point[metric] for c in mine])), "ci": ci, "ci_method": method,
                         "n_seeds": len(mine), "n_test_subjects": n_subjects, "n_test_subjects_per_class": per_class,
                         "steps": _steps(p.frame, arm, fraction), "few_subjects": note is not None, "note": note})
    return rows


def _paired_rows(p: _Prepared, cells: dict[tuple[str, float, int], _CellScores]) -> list[dict[str, Any]]:
    arms = sorted({a for a, _, _ in cells}, key=_arm_rank)
    rows = []
    for metric in SUMMARY_METRICS:
        for arm in [a for a in arms if a in SSL_ARMS]:
            for base in [b for b in arms if b in BASELINE_ARMS]:
                for fraction in sorted({f for _, f, _ in cells}):
                    seeds = sorted(s for a, f, s in cells if (a, f) == (arm, fraction) and (base, f, s) in cells
                                   and metric in cells[(arm, f, s)].point)
                    if not seeds:
                        continue
                    ours, theirs = ([cells[(x, fraction, s)] for s in seeds] for x in (arm, base))
                    diffs = [a.point[metric] - b.point[metric] for a, b in zip(ours, theirs, strict=True)]
                    reps = np.mean([a.reps[metric] - b.reps[metric] for a, b in zip(ours, theirs, strict=True)], axis=0)
                    n_subjects, per_class, note = _row_counts(p, ours + theirs)
                    ci, method = _interval(p, metric, reps, note is not None, None)
                    rows.append({"arm": arm, "baseline": base, "fraction": fraction, "metric": metric,
                                 "mean": float(np.mean(diffs)), "ci": ci, "ci_method": method, "n_seeds": len(seeds),
                                 "n_test_subjects": n_subjects, "n_test_subjects_per_class": per_class,
                                 "wins": int(sum(d > 0 for d in diffs)), "few_subjects": note is not None,
                                 "note": note})
    return rows


def summarise_predictions(
    frame: pd.DataFrame, classes: Sequence[str] | None = None, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Per arm x fraction the mean over seeds with a stratified subject-bootstrap 95% interval, and each SSL
    arm minus each baseline as a paired bootstrap.

    ``frame``: one row per test scan of each run (columns :data:`FRAME_COLUMNS`, optionally ``steps``);
    the folds of one (arm, fraction, seed) are pooled; a row without a subject is its own subject (keyed
    by scan). Metrics: :data:`SLICE_METRIC` always, the subject ones only where every test image has a
    subject id and every subject one label (``subject_level_reason`` says why not). Returns ``summary``
    and ``paired`` row lists with ``interval`` and ``pretraining`` sentences.
    """
    out: dict[str, Any] = {"interval": INTERVAL, "pretraining": PRETRAINING, "n_boot": int(n_boot), "seed": int(seed),
                           "summary": [], "paired": []}
    if frame.empty:
        return out
    p = _prepare(frame.reset_index(drop=True), classes, n_boot, seed)
    cells = _cells(p)
    out["summary"], out["paired"] = _summary_rows(p, cells), _paired_rows(p, cells)
    out["subject_level"], out["subject_level_reason"] = p.subject_level is None, p.subject_level
    return out
