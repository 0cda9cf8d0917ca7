"""The SSL-vs-supervised experiment: one parent run, pretraining once, then every arm x label
fraction x seed as child fine-tuning runs on one identical split, and a summary with intervals.

Resumable: the experiment run is found again by its config fingerprint, finished children are
skipped and the rest (failed, interrupted, never started) are run.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sslmri_core.config import (
    EXPERIMENT_ARMS,
    EXPERIMENT_PRESETS,
    ExperimentConfig,
    FinetuneConfig,
    PretrainConfig,
    from_dict,
    to_dict,
    with_overrides,
)
from sslmri_core.store import RunRecord, RunStore, heartbeat_interval_s

# arm -> (init, mode)
ARM_SETTINGS = {"ssl-linear": ("ssl", "linear"), "ssl-full": ("ssl", "full"),
                "scratch": ("scratch", "full"), "imagenet": ("imagenet", "full")}
SSL_ARMS = ("ssl-linear", "ssl-full")
BASELINE_ARMS = ("scratch", "imagenet")
PRIMARY_METRIC = "test_balanced_accuracy"
SUBJECT_METRIC = "test_subject_balanced_accuracy"
INTERVAL = "95% t-interval over seeds (mean +- t(0.975, n-1) * sd / sqrt(n)); none when n < 2"


@dataclass
class ExperimentResult:
    run_id: int
    status: str
    pretrain_run: int | None
    children: dict[str, int]  # ran, skipped, failed
    summary: list[dict[str, Any]] = field(default_factory=list)
    paired: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "status": self.status, "pretrain_run": self.pretrain_run,
                "children": self.children, "interval": INTERVAL, "summary": self.summary, "paired": self.paired}


# -- configuration ------------------------------------------------------------------------------------
def resolve_experiment_config(store: RunStore, preset: str | None = None, **overrides: Any) -> ExperimentConfig:
    """Defaults, then the preset, then the pretraining run's model and size (``--pretrain-run``), then the user's options."""
    base = ExperimentConfig()
    if preset is not None:
        if preset not in EXPERIMENT_PRESETS:
            raise ValueError(f"--preset must be one of {', '.join(EXPERIMENT_PRESETS)}, got {preset!r}")
        base = with_overrides(base, **EXPERIMENT_PRESETS[preset], preset=preset)
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
    return cfg


def validate_experiment(cfg: ExperimentConfig) -> None:
    """Reject impossible settings with a message naming the option."""
    from sslmri_core.models import check_model_name

    unknown = [a for a in cfg.arms if a not in EXPERIMENT_ARMS]
    checks = [
        (bool(cfg.arms) and not unknown, f"--arms must be a comma-separated subset of {','.join(EXPERIMENT_ARMS)}, "
                                         f"got {','.join(cfg.arms) or '(none)'}"),
        (len(set(cfg.arms)) == len(cfg.arms), "--arms lists an arm twice"),
        (bool(cfg.fractions) and all(0.0 < f <= 1.0 for f in cfg.fractions),
         f"--fractions must be numbers in (0, 1], got {cfg.fractions}"),
        (len(set(cfg.fractions)) == len(cfg.fractions), "--fractions lists a fraction twice"),
        (cfg.seeds >= 1, f"--seeds must be at least 1, got {cfg.seeds}"),
        (cfg.pretrain_epochs >= 1, f"--pretrain-epochs must be at least 1, got {cfg.pretrain_epochs}"),
        (cfg.finetune_epochs >= 1, f"--epochs must be at least 1, got {cfg.finetune_epochs}"),
        (cfg.linear_epochs >= 1, f"--linear-epochs must be at least 1, got {cfg.linear_epochs}"),
        (cfg.image_size >= 16, f"--image-size must be at least 16, got {cfg.image_size}"),
        (cfg.batch_size >= 2, f"--batch-size must be at least 2, got {cfg.batch_size}"),
        ("imagenet" not in cfg.arms or cfg.weights is not None,
         "the imagenet arm needs --weights PATH (a local timm weights file; nothing is downloaded)"),
        (cfg.bootstrap >= 0, f"--bootstrap must be 0 or more, got {cfg.bootstrap}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    if cfg.weights is not None and not Path(cfg.weights).expanduser().is_file():
        raise ValueError(f"--weights: no such file {cfg.weights}")
    check_model_name(cfg.model)


def fingerprint(cfg: ExperimentConfig) -> str:
    """What makes two ``experiment`` commands the same experiment: every setting but the output folder."""
    values = {k: v for k, v in to_dict(cfg).items() if k != "out"}
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def child_config(cfg: ExperimentConfig, arm: str, fraction: float, seed: int, pretrain_run: int | None,
                 experiment_run: int) -> FinetuneConfig:
    """The fine-tuning run of one grid cell: same split (``split_seed``) for every arm; the label draw
    and training vary with ``seed``."""
    init, mode = ARM_SETTINGS[arm]
    return FinetuneConfig(
        task=cfg.task, data=cfg.data, from_run=pretrain_run if init == "ssl" else None, init=init, mode=mode,
        weights=cfg.weights if init == "imagenet" else None, model=cfg.model, image_size=cfg.image_size,
        batch_size=cfg.batch_size, label_fraction=fraction, use_given_split=cfg.use_given_split,
        split_seed=cfg.split_seed, class_map=dict(cfg.class_map),
        epochs=cfg.linear_epochs if mode == "linear" else cfg.finetune_epochs, lr=cfg.lr,
        encoder_lr_scale=cfg.encoder_lr_scale if init != "scratch" else 1.0, precision=cfg.precision, seed=seed,
        out=cfg.out, subject_pattern=cfg.subject_pattern, bootstrap=cfg.bootstrap, arm=arm,
        experiment_run=experiment_run,
    )


# -- the run ------------------------------------------------------------------------------------------
@contextmanager
def _keep_alive(store: RunStore, run_id: int) -> Iterator[None]:
    """Heartbeat the experiment run from a thread while its children train (they beat their own runs)."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(heartbeat_interval_s()):
            try:
                store.heartbeat(run_id)
            except Exception:  # a missed beat is harmless; the next one retries
                pass

    thread = threading.Thread(target=beat, name=f"experiment-{run_id}-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def _find_experiment(store: RunStore, fp: str) -> RunRecord | None:
    matches = [r for r in store.list_runs("experiment") if r.config.get("fingerprint") == fp]
    return matches[-1] if matches else None


def _children(store: RunStore, experiment_id: int, kind: str = "finetune") -> list[RunRecord]:
    return [r for r in store.list_runs(kind) if r.parent_run_id == experiment_id]


def _cell(record: RunRecord) -> tuple[str, float, int]:
    return str(record.config.get("arm")), float(record.config.get("label_fraction", 1.0)), int(record.config.get("seed", 0))


def _open_experiment(store: RunStore, cfg: ExperimentConfig) -> tuple[int, bool]:
    """The experiment run for ``cfg``: the stored one (reopened) or a new one. Returns (id, resumed)."""
    from sslmri_core.progress import console

    fp = fingerprint(cfg)
    found = _find_experiment(store, fp)
    if found is None:
        run_id = store.start_run("experiment", {**to_dict(cfg), "fingerprint": fp}, task=cfg.task)
        store.log_params(run_id, {"fingerprint": fp, "arms": ",".join(cfg.arms),
                                  "fractions": ",".join(str(f) for f in cfg.fractions), "seeds": cfg.seeds,
                                  "preset": cfg.preset, "model": cfg.model, "image_size": cfg.image_size})
        return run_id, False
    if found.status == "running":
        raise ValueError(f"experiment run {found.id} with these settings is still running (heartbeat alive); "
                         "wait for it, or stop it first")
    if found.status == "finished":
        store.update_run(found.id, status="running", ended_at=None, error=None)
    elif not store.reopen_run(found.id):
        raise ValueError(f"experiment run {found.id} could not be reopened (another process took it)")
    console.print(f"resuming experiment run {found.id} (same settings, fingerprint {fp})")
    return found.id, True


def _pretrain_once(store: RunStore, cfg: ExperimentConfig, experiment_id: int, show_progress: bool) -> int | None:
    """The SSL run the ssl arms start from: ``--pretrain-run``, this experiment's finished one, or a new one
    (on the data folder's training subjects only: val and test of the split ``split_seed`` draws, the one the
    children use, are left out)."""
    from sslmri_core.pretrain import pretrain

    if not any(ARM_SETTINGS[a][0] == "ssl" for a in cfg.arms):
        return None
    if cfg.pretrain_run is not None:
        return cfg.pretrain_run
    done = [r for r in _children(store, experiment_id, "pretrain") if r.status == "finished"]
    if done:
        return done[-1].id
    pre_cfg = PretrainConfig(
        data=[cfg.data] if cfg.data else [], model=cfg.model, image_size=cfg.image_size, batch_size=cfg.batch_size,
        epochs=cfg.pretrain_epochs, precision=cfg.precision, out=cfg.out, subject_pattern=cfg.subject_pattern,
        exclude_test=True, exclude_val=True, split_seed=cfg.split_seed,  # training subjects only
    )
    result = pretrain(pre_cfg, store, show_progress=show_progress)
    store.update_run(result.run_id, parent_run_id=experiment_id)  # so a re-run finds and reuses it
    return result.run_id


def run_experiment(cfg: ExperimentConfig, store: RunStore, *, show_progress: bool = True) -> ExperimentResult:
    """Run (or resume) the whole grid; store and return the summary. Failed children do not stop the
    grid: the experiment then ends ``failed`` (re-run the same command to retry just those)."""
    from sslmri_core.finetune import finetune, load_finetune_data
    from sslmri_core.progress import console

    validate_experiment(cfg)
    # Read the folder first: a bad --data is one line (exit 2) and records nothing.
    data = load_finetune_data(child_config(cfg, cfg.arms[0], cfg.fractions[0], 0, None, 0))
    if "test" in data.given_splits and not cfg.use_given_split and cfg.pretrain_run is None:
        # pretraining leaves out the folder's own Testing split; the children must test on that same split
        raise ValueError(f"--data {cfg.data} has a Testing/test folder: pass --use-given-split, so the images "
                         "pretraining leaves out are the ones the fine-tuning runs are tested on")
    experiment_id, _ = _open_experiment(store, cfg)
    counts = {"ran": 0, "skipped": 0, "failed": 0}
    failures: list[str] = []
    with store.track(experiment_id), _keep_alive(store, experiment_id):
        pretrain_run = _pretrain_once(store, cfg, experiment_id, show_progress)
        store.log_params(experiment_id, {"pretrain_run": pretrain_run})
        done = {_cell(r) for r in _children(store, experiment_id) if r.status == "finished"}
        cells = [(arm, f, s) for f in cfg.fractions for s in range(cfg.seeds) for arm in cfg.arms]
        for n, (arm, fraction, seed) in enumerate(cells, 1):
            if (arm, float(fraction), seed) in done:
                counts["skipped"] += 1
                continue
            console.print(f"[bold]experiment {experiment_id}: {n}/{len(cells)} {arm}, fraction {fraction}, seed {seed}[/]")
            child = child_config(cfg, arm, fraction, seed, pretrain_run, experiment_id)
            try:
                finetune(child, store, show_progress=show_progress, parent_run_id=experiment_id, data=data)
                counts["ran"] += 1
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # the child is stored as failed with its error; carry on with the grid
                counts["failed"] += 1
                failures.append(f"{arm}/{fraction}/seed {seed}: {exc.__class__.__name__}: {exc}")
                console.print(f"[bold red]child {arm}, fraction {fraction}, seed {seed} failed: {exc}[/]")
        result = summarise(store, experiment_id)
        result.pretrain_run, result.children = pretrain_run, counts
        store.log_result(experiment_id, "summary", result.to_json())
        print_summary(result, cfg)
        if failures:
            raise RuntimeError(f"{len(failures)} of {len(cells)} grid runs failed ({failures[0]}"
                               f"{' ...' if len(failures) > 1 else ''}); re-run the same command to retry them")
    result.status = "finished"
    return result


# -- the summary ----------------------------------------------------------------------------------------
def t_interval(values: list[float]) -> tuple[float, list[float | None], float]:
    """Mean, 95% t-interval and sample SD of ``values`` (interval None when fewer than 2)."""
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, [None, None], float("nan")
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.975, len(x) - 1)) * sd / math.sqrt(len(x))
    return mean, [mean - half, mean + half], sd


def _split_levels(store: RunStore, run_ids: list[int]) -> dict[int, str | None]:
    from sqlalchemy import select

    from sslmri_core.store import Param

    stmt = select(Param.run_id, Param.value).where(Param.run_id.in_(run_ids), Param.key == "split_level")
    with store.engine.connect() as conn:
        return {int(r): v for r, v in conn.execute(stmt)}


def summarise(store: RunStore, experiment_id: int) -> ExperimentResult:
    """Mean and interval per arm x fraction (over seeds), and SSL - supervised differences paired by
    fraction and seed, from the experiment's finished children (the latest one per grid cell)."""
    latest: dict[tuple[str, float, int], RunRecord] = {}
    for r in _children(store, experiment_id):
        if r.status == "finished":
            latest[_cell(r)] = r
    values: dict[str, dict[tuple[str, float, int], float]] = {PRIMARY_METRIC: {}, SUBJECT_METRIC: {}}
    levels = _split_levels(store, [r.id for r in latest.values()])
    for cell, record in latest.items():
        final = store.final_metrics(record.id)
        for metric in values:
            if metric == SUBJECT_METRIC and levels.get(record.id) != "subject":
                continue  # without subject ids the subject level is the image level: not reported twice
            if metric in final and math.isfinite(final[metric]):
                values[metric][cell] = final[metric]
    summary, paired = [], []
    for metric, cells in values.items():
        arms = sorted({a for a, _, _ in cells}, key=lambda a: EXPERIMENT_ARMS.index(a) if a in EXPERIMENT_ARMS else 99)
        fractions = sorted({f for _, f, _ in cells})
        for arm in arms:
            for f in fractions:
                xs = [v for (a, ff, _), v in sorted(cells.items()) if a == arm and ff == f]
                if xs:
                    mean, ci, sd = t_interval(xs)
                    summary.append({"arm": arm, "fraction": f, "metric": metric, "mean": mean, "ci": ci,
                                    "n": len(xs), "sd": sd})
        for ssl in [a for a in arms if a in SSL_ARMS]:
            for base in [a for a in arms if a in BASELINE_ARMS]:
                for f in fractions:
                    seeds = sorted({s for a, ff, s in cells if ff == f and a == ssl} &
                                   {s for a, ff, s in cells if ff == f and a == base})
                    if not seeds:
                        continue
                    diffs = [cells[(ssl, f, s)] - cells[(base, f, s)] for s in seeds]
                    mean, ci, sd = t_interval(diffs)
                    paired.append({"arm": ssl, "baseline": base, "fraction": f, "metric": metric, "mean": mean,
                                   "ci": ci, "n": len(diffs), "sd": sd, "wins": int(sum(d > 0 for d in diffs))})
    return ExperimentResult(experiment_id, "running", None, {}, summary, paired)


def _fmt(mean: float, ci: list[float | None], signed: bool = False) -> str:
    body = f"{mean:+.3f}" if signed else f"{mean:.3f}"
    if ci[0] is None or ci[1] is None:
        return body
    return f"{body} [{ci[0]:.3f}, {ci[1]:.3f}]"


def print_summary(result: ExperimentResult, cfg: ExperimentConfig) -> None:
    """The summary and paired tables on stderr (Rich)."""
    from rich.table import Table

    from sslmri_core.progress import console

    for metric in (PRIMARY_METRIC, SUBJECT_METRIC):
        rows = [r for r in result.summary if r["metric"] == metric]
        if not rows:
            continue
        fractions = sorted({r["fraction"] for r in rows})
        table = Table(title=f"experiment {result.run_id}: {cfg.task}, {metric}, mean [95% t-interval over seeds]")
        table.add_column("arm")
        for f in fractions:
            table.add_column(f"fraction {f:g}", justify="right")
        for arm in dict.fromkeys(r["arm"] for r in rows):
            cells = {r["fraction"]: r for r in rows if r["arm"] == arm}
            table.add_row(arm, *(_fmt(cells[f]["mean"], cells[f]["ci"]) + f" (n={cells[f]['n']})" if f in cells else ""
                                 for f in fractions))
        console.print(table)
        pairs = [p for p in result.paired if p["metric"] == metric]
        if pairs:
            table = Table(title=f"paired difference (same fraction and seed), {metric}")
            for col in ("ssl arm", "minus", "fraction", "mean diff [95% CI]", "n", "ssl wins"):
                table.add_column(col)
            for p in pairs:
                table.add_row(p["arm"], p["baseline"], f"{p['fraction']:g}", _fmt(p["mean"], p["ci"], signed=True),
                              str(p["n"]), str(p["wins"]))
            console.print(table)
