"""The SSL-vs-supervised experiment: one parent run, pretraining once, then every arm x label
fraction x seed as child fine-tuning runs on one identical split, and a summary with intervals.

Resumable: the experiment run is found again by its config fingerprint, finished children are
skipped and the rest (failed, interrupted, never started) are run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sslmri_core.config import (
    ARM_SETTINGS,
    ARMS,
    PREPROCESS,
    ExperimentConfig,
    FinetuneConfig,
    PretrainConfig,
    check_values,
    from_dict,
    preset_settings,
    refuse_first,
    to_dict,
    with_overrides,
)
from sslmri_core.data.loading import ImageSet

# The summary's statistics live in sslmri_core.evaluation.stats, shared with the dashboard (no torch there).
from sslmri_core.evaluation.stats import (
    EXACT_METHOD,
    INTERVAL,
    PRETRAINING,
    SUBJECT_ACCURACY,
)
from sslmri_core.evaluation.stats import SLICE_METRIC as PRIMARY_METRIC
from sslmri_core.evaluation.stats import SUBJECT_BALANCED as SUBJECT_METRIC
from sslmri_core.store.lifecycle import open_run
from sslmri_core.store.status import RunRecord
from sslmri_core.store.writer import RunStore


@dataclass
class ExperimentResult:
    run_id: int
    status: str
    pretrain_run: int | None
    children: dict[str, int]  # ran, skipped, failed
    summary: list[dict[str, Any]] = field(default_factory=list)
    paired: list[dict[str, Any]] = field(default_factory=list)
    interval: str = INTERVAL
    pretraining: str = PRETRAINING  # that pretraining is one draw
    extra: dict[str, Any] = field(default_factory=dict)  # more top-level keys (folds, ssl_pool_test_overlap, ...)

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "status": self.status, "pretrain_run": self.pretrain_run,
                "children": self.children, "interval": self.interval, "pretraining": self.pretraining,
                **self.extra, "summary": self.summary, "paired": self.paired}


# -- configuration ------------------------------------------------------------------------------------
def resolve_experiment_config(store: RunStore, preset: str | None = None, **overrides: Any) -> ExperimentConfig:
    """Defaults, then the preset, then the pretraining run's model and size (``--pretrain-run``), then the
    user's options."""
    base = ExperimentConfig()
    check_values(with_overrides(base, **overrides))  # --pretrain-run and every number, before the store is read
    base = with_overrides(base, **preset_settings(preset, "experiment"))
    pretrain_run = overrides.get("pretrain_run")
    if pretrain_run is not None:
        if overrides.get("pretrain_epochs") is not None:
            raise ValueError("--pretrain-run and --pretrain-epochs exclude each other")
        parent = store.get_run_for("--pretrain-run", pretrain_run)
        if parent.kind != "pretrain" or parent.status != "finished":
            raise ValueError(f"--pretrain-run {pretrain_run} is a {parent.status} {parent.kind} run, "
                             "not a finished pretraining run")
        pre = from_dict(PretrainConfig, parent.config)
        for name in ("model", "image_size"):
            given = overrides.get(name)
            if given is not None and given != getattr(pre, name):
                raise ValueError(f"--{name.replace('_', '-')} {given} differs from --pretrain-run {pretrain_run}'s "
                                 f"{getattr(pre, name)}")
        base = with_overrides(base, model=pre.model, image_size=pre.image_size)
    cfg = with_overrides(base, **overrides)
    if cfg.data is not None:
        cfg.data = str(Path(cfg.data).expanduser().resolve())
    cfg.unlabeled = [str(Path(d).expanduser().resolve()) for d in cfg.unlabeled]  # one folder, one spelling
    return cfg


def validate_experiment(cfg: ExperimentConfig) -> None:
    """Reject impossible settings with a message naming the option."""
    from sslmri_core.train.models import check_model_name

    check_values(cfg)
    unknown = [a for a in cfg.arms if a not in ARMS]
    checks = [
        (bool(cfg.arms) and not unknown, f"--arms must be a comma-separated subset of {','.join(ARMS)}, "
                                         f"got {','.join(cfg.arms) or '(none)'}"),
        (len(set(cfg.arms)) == len(cfg.arms), "--arms lists an arm twice"),
        (bool(cfg.fractions) and all(0.0 < f <= 1.0 for f in cfg.fractions),
         f"--fractions must be numbers in (0, 1], got {cfg.fractions}"),
        (len(set(cfg.fractions)) == len(cfg.fractions), "--fractions lists a fraction twice"),
        (cfg.seeds >= 1, f"--seeds must be at least 1, got {cfg.seeds}"),
        (cfg.pretrain_epochs >= 1, f"--pretrain-epochs must be at least 1, got {cfg.pretrain_epochs}"),
        (cfg.finetune_epochs >= 1, f"--epochs must be at least 1, got {cfg.finetune_epochs}"),
        (cfg.min_steps >= 0, f"--min-steps must be 0 or more, got {cfg.min_steps}"),
        (cfg.folds is None or cfg.folds >= 2, f"--folds must be at least 2, got {cfg.folds}"),
        (cfg.folds is None or not cfg.use_given_split, "--folds and --use-given-split exclude each other"),
        (cfg.image_size >= 16, f"--image-size must be at least 16, got {cfg.image_size}"),
        (cfg.batch_size >= 2, f"--batch-size must be at least 2, got {cfg.batch_size}"),
        ("imagenet" not in cfg.arms or cfg.weights is not None,
         "the imagenet arm needs --weights PATH (a local timm weights file; nothing is downloaded)"),
        (cfg.bootstrap >= 0, f"--bootstrap must be 0 or more, got {cfg.bootstrap}"),
        (cfg.preprocess in PREPROCESS, f"--preprocess must be one of {', '.join(PREPROCESS)}, got {cfg.preprocess!r}"),
    ]
    refuse_first(checks)
    if cfg.weights is not None and not Path(cfg.weights).expanduser().is_file():
        raise ValueError(f"--weights: no such file {cfg.weights}")
    for folder in cfg.unlabeled:
        if not Path(folder).expanduser().is_dir():
            raise ValueError(f"--unlabeled: no such folder {folder}")
    check_model_name(cfg.model)


def fingerprint(cfg: ExperimentConfig, data_fingerprint: str = "", unlabeled_fingerprint: str = "") -> str:
    """What makes two ``experiment`` commands the same experiment: every setting but the output folder,
    and the content of the data and of the ``--unlabeled`` folders (files added, removed, changed or
    relabelled make another experiment)."""
    values = {k: v for k, v in to_dict(cfg).items() if k != "out"}
    values["data_fingerprint"] = data_fingerprint
    if unlabeled_fingerprint:  # absent without --unlabeled, so earlier experiments keep their fingerprint
        values["unlabeled_fingerprint"] = unlabeled_fingerprint
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def has_ssl_arm(cfg: ExperimentConfig) -> bool:
    """Whether an arm starts from an SSL encoder (else the experiment neither pretrains nor reads one)."""
    return any(ARM_SETTINGS[a][0] == "ssl" for a in cfg.arms)


def unlabeled_fingerprint(cfg: ExperimentConfig) -> str:
    """Content of the ``--unlabeled`` folders the experiment pretrains on ('' when it pretrains on none).
    They are read as pretraining reads them, so the image cache serves pretraining afterwards."""
    if not cfg.unlabeled or cfg.pretrain_run is not None or not has_ssl_arm(cfg):
        return ""
    from sslmri_core.data.loading import load_folder

    return ",".join(load_folder(root, cfg.image_size, cfg.subject_pattern, None, cfg.preprocess)
                    .manifests[0].fingerprint() for root in cfg.unlabeled)


def child_config(cfg: ExperimentConfig, arm: str, fraction: float, seed: int, pretrain_run: int | None,
                 experiment_run: int, steps: int | None = None, fold: int | None = None) -> FinetuneConfig:
    """The fine-tuning run of one grid cell: same split (``split_seed``, fold ``fold``) and, at one
    label fraction, the same optimiser ``steps`` for every arm; the label draw and training vary with ``seed``.
    Settings the experiment does not own (label smoothing, TTA, augmentation, ...) come from its preset's
    fine-tuning recipe, else the fine-tuning defaults."""
    init, mode = ARM_SETTINGS[arm]
    recipe = with_overrides(FinetuneConfig(), **preset_settings(cfg.preset, "finetune"))
    return dataclasses.replace(
        recipe, task=cfg.task, data=cfg.data, preprocess=cfg.preprocess,
        from_run=pretrain_run if init == "ssl" else None, init=init, mode=mode,
        weights=cfg.weights if init == "imagenet" else None, model=cfg.model, image_size=cfg.image_size,
        batch_size=cfg.batch_size, label_fraction=fraction, use_given_split=cfg.use_given_split,
        allow_leaky_split=cfg.allow_leaky_split, split_seed=cfg.split_seed, class_map=dict(cfg.class_map),
        folds=cfg.folds, fold=fold, epochs=cfg.finetune_epochs, steps=steps, min_steps=cfg.min_steps, lr=cfg.lr,
        encoder_lr_scale=cfg.encoder_lr_scale if init != "scratch" else 1.0, precision=cfg.precision, seed=seed,
        out=cfg.out, subject_pattern=cfg.subject_pattern, bootstrap=cfg.bootstrap, arm=arm,
        experiment_run=experiment_run,
    )


def fold_list(cfg: ExperimentConfig) -> list[int | None]:
    """The folds of the grid: ``[None]`` for one 70/15/15 split."""
    return list(range(cfg.folds)) if cfg.folds else [None]


def step_budgets(cfg: ExperimentConfig, data: ImageSet) -> dict[float, int]:
    """Optimiser steps per label fraction, shared by every arm, seed and fold: ``max(min_steps, epochs
    x batches of the labelled set)``, the labelled set being seed 0's draw on the first fold."""
    from sslmri_core.train.finetune import plan_steps, split_data

    budgets = {}
    for fraction in cfg.fractions:
        child = child_config(cfg, cfg.arms[0], fraction, 0, None, 0, fold=fold_list(cfg)[0])
        budgets[fraction] = plan_steps(child, len(split_data(data, child)[1]))
    return budgets


# -- the run ------------------------------------------------------------------------------------------
def _find_experiment(store: RunStore, fp: str) -> RunRecord | None:
    matches = [r for r in store.list_runs("experiment") if r.config.get("fingerprint") == fp]
    return matches[-1] if matches else None


def _children(store: RunStore, experiment_id: int, kind: str = "finetune") -> list[RunRecord]:
    return [r for r in store.list_runs(kind) if r.parent_run_id == experiment_id]


def _cell(record: RunRecord) -> tuple[str, float, int, int | None]:
    fold = record.config.get("fold")
    return (str(record.config.get("arm")), float(record.config.get("label_fraction", 1.0)),
            int(record.config.get("seed", 0)), None if fold is None else int(fold))


def untrained_by_fold(store: RunStore, experiment_id: int) -> dict[str, list[str]]:
    """Per fold (1-based, "all" without folds), the test classes that no finished child had a training
    image of (their recall is 0 by construction); folds without any are left out."""
    found: dict[str, set[str]] = {}
    for record in (r for r in _children(store, experiment_id) if r.status == "finished"):
        classes = json.loads(store.params(record.id).get("untrained_test_classes") or "[]")
        if classes:
            fold = _cell(record)[3]
            found.setdefault("all" if fold is None else str(fold + 1), set()).update(classes)
    return {fold: sorted(classes) for fold, classes in sorted(found.items())}


def _reopen_experiment(store: RunStore, fp: str) -> int | None:
    """The stored experiment run with fingerprint ``fp``, reopened (``running`` again); None when there is none."""
    from sslmri_core.progress import console

    found = _find_experiment(store, fp)
    if found is None:
        return None
    if found.status == "running":
        raise ValueError(f"experiment run {found.id} with these settings is still running (heartbeat alive); "
                         "wait for it, or stop it first")
    if found.status == "finished":
        store.update_run(found.id, status="running", ended_at=None, error=None)
    elif not store.reopen_run(found.id):
        raise ValueError(f"experiment run {found.id} could not be reopened (another process took it)")
    console.print(f"resuming experiment run {found.id} (same settings, fingerprint {fp})")
    return found.id


def _log_experiment(store: RunStore, run_id: int, cfg: ExperimentConfig, fp: str, data_fingerprint: str) -> None:
    store.log_params(run_id, {"fingerprint": fp, "data_fingerprint": data_fingerprint, "arms": ",".join(cfg.arms),
                              "fractions": ",".join(str(f) for f in cfg.fractions), "seeds": cfg.seeds,
                              "folds": cfg.folds, "preset": cfg.preset, "preprocess": cfg.preprocess,
                              "model": cfg.model, "image_size": cfg.image_size})


def pretrain_settings(cfg: ExperimentConfig) -> dict[str, Any]:
    """What the experiment's pretraining takes from its preset's pretraining recipe, under the experiment's own
    settings; its batch is ``pretrain_batch_size``, else ``batch_size``."""
    return {**preset_settings(cfg.preset, "pretrain"), "batch_size": cfg.pretrain_batch_size or cfg.batch_size}


def _pretrain_once(store: RunStore, cfg: ExperimentConfig, experiment_id: int, show_progress: bool,
                   fold: int | None = None) -> int | None:
    """The SSL run the ssl arms of ``fold`` start from: ``--pretrain-run``, this experiment's finished
    one, or a new one on exactly the children's training groups (the split drawn with the children's
    class map, given split and fold; their val and test groups are left out). The built-in data
    pretrain on their own pool of other subjects, once for every fold."""
    from sslmri_core.train.pretrain import pretrain

    if not has_ssl_arm(cfg):
        return None
    if cfg.pretrain_run is not None:
        return cfg.pretrain_run
    pool_fold = fold if cfg.data else None
    done = [r for r in _children(store, experiment_id, "pretrain")
            if r.status == "finished" and r.config.get("fold") == pool_fold]
    if done:
        return done[-1].id
    recipe = with_overrides(PretrainConfig(), **pretrain_settings(cfg))
    pre_cfg = dataclasses.replace(
        recipe, data=[cfg.data] if cfg.data else [], unlabeled=list(cfg.unlabeled), preprocess=cfg.preprocess,
        model=cfg.model, image_size=cfg.image_size, epochs=cfg.pretrain_epochs, precision=cfg.precision, out=cfg.out,
        subject_pattern=cfg.subject_pattern, exclude_test=True, exclude_val=True, split_seed=cfg.split_seed,
        class_map=dict(cfg.class_map), use_given_split=cfg.use_given_split, allow_leaky_split=cfg.allow_leaky_split,
        folds=cfg.folds if cfg.data else None, fold=pool_fold,
    )
    result = pretrain(pre_cfg, store, show_progress=show_progress)
    store.update_run(result.run_id, parent_run_id=experiment_id)  # so a re-run finds and reuses it
    return result.run_id


# What the pretraining runs logged about their pool -> the experiment's name for it.
POOL_PARAMS = {"n_images": "pool_images", "unlabeled_images": "unlabeled_images",
               "unlabeled_overlap": "unlabeled_overlap"}


def pool_counts(store: RunStore, pretrain_runs: list[int | None]) -> dict[str, Any]:
    """Images in the SSL pool, those of them from ``--unlabeled`` folders, and the ``--unlabeled`` images left
    out as copies of val/test images, as the (first) pretraining run logged them; a count it did not log is
    absent. With a pretraining per fold, ``..._per_fold`` lists every fold's count."""
    runs = list(dict.fromkeys(r for r in pretrain_runs if r is not None))
    per_run: list[dict[str, int]] = []
    for run_id in runs:
        params, counts = store.params(run_id), {}
        for key, name in POOL_PARAMS.items():
            try:
                counts[name] = int(float(str(params.get(key))))
            except ValueError:  # not logged (None) or not a number
                continue
        per_run.append(counts)
    out: dict[str, Any] = dict(per_run[0]) if per_run else {}
    if len(per_run) > 1:
        out.update({f"{name}_per_fold": [c.get(name) for c in per_run] for name in out})
    return out


def _pool_test_overlap(store: RunStore, pretrain_run: int | None, data: ImageSet, child: FinetuneConfig) -> int:
    """Test groups of ``child``'s split found (by content) in the SSL pool of ``pretrain_run``."""
    from sslmri_core.train.finetune import pool_overlap, split_data

    if pretrain_run is None:
        return 0
    split, _ = split_data(data, child)
    return pool_overlap(store, pretrain_run, data, split.test, split.groups)[0]


def run_experiment(cfg: ExperimentConfig, store: RunStore, *, show_progress: bool = True) -> ExperimentResult:
    """Run (or resume) the whole grid; store and return the summary. Failed children do not stop the
    grid: the experiment then ends ``failed`` (re-run the same command to retry just those)."""
    from sslmri_core.progress import console
    from sslmri_core.train.finetune import finetune, load_finetune_data, split_data

    validate_experiment(cfg)
    # Read the folder and draw every split first: a bad --data, a leaky given split or too many
    # folds is one line (exit 2) and records nothing.
    data = load_finetune_data(child_config(cfg, cfg.arms[0], cfg.fractions[0], 0, None, 0))
    for fold in fold_list(cfg):
        split_data(data, child_config(cfg, cfg.arms[0], cfg.fractions[0], 0, None, 0, fold=fold))
    budgets = step_budgets(cfg, data)
    counts = {"ran": 0, "skipped": 0, "failed": 0}
    failures: list[str] = []
    cells = [(arm, f, s, fold) for fold in fold_list(cfg) for f in cfg.fractions for s in range(cfg.seeds)
             for arm in cfg.arms]
    data_fp = data.manifests[0].fingerprint()
    fp = fingerprint(cfg, data_fp, unlabeled_fingerprint(cfg))
    resumed = _reopen_experiment(store, fp)
    with open_run(store, "experiment", {**to_dict(cfg), "fingerprint": fp}, task=cfg.task, run_id=resumed) as run:
        experiment_id = run.run_id
        if resumed is None:
            _log_experiment(store, experiment_id, cfg, fp, data_fp)
        pretrain_runs = {fold: _pretrain_once(store, cfg, experiment_id, show_progress, fold)
                         for fold in fold_list(cfg)}
        overlap = sum(_pool_test_overlap(store, run, data, child_config(cfg, cfg.arms[0], 1.0, 0, run, 0, fold=fold))
                      for fold, run in pretrain_runs.items())
        pool = pool_counts(store, list(pretrain_runs.values()))
        if any(r is not None for r in pretrain_runs.values()):
            console.print(f"SSL pool vs the children's test groups, compared by content: {overlap} in common")
        store.log_params(experiment_id, {**{k: v for k, v in pool.items() if not isinstance(v, list)},
            "pretrain_run": ",".join(str(r) for r in dict.fromkeys(pretrain_runs.values()) if r is not None) or None,
            "ssl_pool_test_overlap": overlap, "steps": json.dumps({str(f): n for f, n in budgets.items()})})
        done = {_cell(r) for r in _children(store, experiment_id) if r.status == "finished"}
        for n, (arm, fraction, seed, fold) in enumerate(cells, 1):
            if (arm, float(fraction), seed, fold) in done:
                counts["skipped"] += 1
                continue
            where = f", fold {fold + 1}/{cfg.folds}" if fold is not None else ""
            console.print(f"experiment {experiment_id}: {n}/{len(cells)} {arm}, fraction {fraction}, seed {seed}"
                          f"{where}, {budgets[fraction]} steps", style="bold")
            child = child_config(cfg, arm, fraction, seed, pretrain_runs[fold], experiment_id, budgets[fraction], fold)
            try:
                finetune(child, store, show_progress=show_progress, parent_run_id=experiment_id, data=data)
                counts["ran"] += 1
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # the child is stored as failed with its error; carry on with the grid
                counts["failed"] += 1
                failures.append(f"{arm}/{fraction}/seed {seed}{where}: {exc.__class__.__name__}: {exc}")
                console.print(f"child {arm}, fraction {fraction}, seed {seed}{where} failed: {exc}", style="bold red")
        result = summarise(store, experiment_id)
        first = next(iter(pretrain_runs.values()))
        result.pretrain_run, result.children = first, counts
        result.extra.update(folds=cfg.folds, pretrain_runs=[r for r in pretrain_runs.values() if r is not None],
                            ssl_pool_test_overlap=overlap, **pool, steps={str(f): n for f, n in budgets.items()},
                            data_fingerprint=data.manifests[0].fingerprint(), split_level=data.grouping.level
                            if data.grouping else None,
                            untrained_test_classes=untrained_by_fold(store, experiment_id))
        store.log_result(experiment_id, "summary", result.to_json())
        print_summary(result, cfg)
        if failures:
            raise RuntimeError(f"{len(failures)} of {len(cells)} grid runs failed ({failures[0]}"
                               f"{' ...' if len(failures) > 1 else ''}); re-run the same command to retry them")
    result.status = "finished"
    return result


# -- the summary ----------------------------------------------------------------------------------------
def summarise(store: RunStore, experiment_id: int) -> ExperimentResult:
    """Per arm x fraction the mean over seeds with a stratified subject-bootstrap interval, and each SSL arm
    minus each baseline paired (one resample for both), from the finished children's test predictions
    (the latest run per arm, fraction, seed and fold; folds pooled). See :mod:`sslmri_core.evaluation.stats`."""
    from sslmri_core.evaluation.stats import summarise_predictions
    from sslmri_core.store.queries import experiment_predictions

    frame = experiment_predictions(store.engine, experiment_id)
    n_boot = int(store.get_run(experiment_id).config.get("bootstrap", 1000))
    out = summarise_predictions(frame, classes=frame.attrs.get("classes"), n_boot=n_boot)
    return ExperimentResult(experiment_id, "running", None, {}, out["summary"], out["paired"],
                            interval=out["interval"], pretraining=out["pretraining"])


def format_interval(mean: float, ci: list[float | None], signed: bool = False) -> str:
    """``0.828 [0.799, 0.853]`` (``signed``: ``+0.052 [+0.033, +0.069]``); ``[no interval]`` when it has none."""
    body = f"{mean:+.3f}" if signed else f"{mean:.3f}"
    if ci[0] is None or ci[1] is None:
        return f"{body} [no interval]"
    return f"{body} [{ci[0]:+.3f}, {ci[1]:+.3f}]" if signed else f"{body} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _subjects(row: dict[str, Any]) -> str:
    """``n_test_subjects``, per class when a class has few (``12 (AD 3, CN 9)``)."""
    if not row.get("few_subjects"):
        return str(row["n_test_subjects"])
    per_class = ", ".join(f"{c} {n}" for c, n in (row.get("n_test_subjects_per_class") or {}).items())
    return f"{row['n_test_subjects']} ({per_class})"


def label_share(fraction: float) -> str:
    """A label fraction as the tables show it: ``0.05`` -> ``5%``."""
    return f"{fraction * 100:g}%"


def _steps(row: dict[str, Any]) -> str:
    steps = row.get("steps")
    return "—" if steps is None else "/".join(str(s) for s in steps) if isinstance(steps, list) else str(steps)


def print_summary(result: ExperimentResult, cfg: ExperimentConfig) -> None:
    """Per metric: the summary table (``mean [lo, hi]`` with ``n_test_subjects``, seeds and steps) and the
    paired table (difference with ``ci`` and ``n_test_subjects``), on stderr (Rich)."""
    from rich.table import Table

    from sslmri_core.progress import console

    for metric in (PRIMARY_METRIC, SUBJECT_METRIC, SUBJECT_ACCURACY):
        rows = [r for r in result.summary if r["metric"] == metric]
        if not rows:
            continue
        table = Table(title=f"experiment {result.run_id}: {cfg.task}, {metric}, mean over seeds [95% CI]")
        for col in ("arm", "labels", "mean [95% CI]", "test subjects", "seeds", "steps"):
            table.add_column(col, justify="left" if col == "arm" else "right", no_wrap=col != "test subjects")
        for r in rows:
            exact = "*" if r.get("ci_method") == EXACT_METHOD else ""
            table.add_row(r["arm"], label_share(r["fraction"]), format_interval(r["mean"], r["ci"]) + exact,
                          _subjects(r), str(r["n_seeds"]), _steps(r))
        console.print(table)
        if any(r.get("ci_method") == EXACT_METHOD for r in rows):
            console.print("* exact Clopper-Pearson interval of the seed-mean count of correct subjects")
        pairs = [p for p in result.paired if p["metric"] == metric]
        if pairs:
            table = Table(title=f"paired difference (same test subjects, seeds and resamples), {metric}")
            for col in ("comparison", "labels", "mean diff [95% CI]", "test subjects", "wins"):
                table.add_column(col, justify="left" if col == "comparison" else "right",
                                 no_wrap=col != "test subjects")
            for p in pairs:
                table.add_row(f"{p['arm']} - {p['baseline']}", label_share(p["fraction"]),
                              format_interval(p["mean"], p["ci"], signed=True), _subjects(p),
                              f"{p['wins']}/{p['n_seeds']}")
            console.print(table)
    pool = result.extra.get("pool_images")
    if pool is not None:
        unlabeled = result.extra.get("unlabeled_images")
        dropped = result.extra.get("unlabeled_overlap")
        console.print(f"SSL pool: {pool} unlabeled images" + (f", {unlabeled} of them from --unlabeled" if unlabeled
                      is not None else "") + (f" ({dropped} copies of val/test images left out)" if dropped else ""))
    notes = dict.fromkeys(r["note"] for r in [*result.summary, *result.paired] if r.get("note"))
    for note in notes:
        console.print(f"note: {note}", style="yellow")
    for fold, classes in result.extra.get("untrained_test_classes", {}).items():
        where = "" if fold == "all" else f" of fold {fold}"
        console.print(f"note: no training image of {', '.join(classes)} in the split{where}: its test recall is 0 "
                      "by construction", style="yellow")
    console.print(f"intervals: {result.interval}. {result.pretraining[:1].upper()}{result.pretraining[1:]}.")
