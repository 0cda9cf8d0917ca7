"""``make demo``'s main job, on the built-in data: everything the dashboard shows, and the answer.

1. the **audit** of the pretraining pool and of the labelled set (the Data page);
2. the **leakage demonstration** on the labelled set (the Data page's 2x2 chart);
3. the **SSL-vs-supervised experiment** (:func:`~sslmri_core.evaluation.experiment.run_experiment`):
   SimCLR once on the built-in pretraining pool (other subjects, more images than the labelled set), then
   every arm x label fraction x seed on one subject split, the same optimiser steps for every arm at a
   fraction (the SSL vs Supervised, Runs and Confusion pages);
4. **Grad-CAM** of one fine-tuned model's test scans (the Scan Explorer) and a **UMAP** of the pretrained
   encoder's features (the Embeddings page);

and, last, the paired SSL - scratch difference per label fraction with its 95% interval.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sslmri_core.config import (
    ARM_SETTINGS,
    NO_WEIGHTS_ARMS,
    SSL_ARMS,
    DemoConfig,
    ExperimentConfig,
    GradcamConfig,
    LeakageConfig,
    to_dict,
    with_overrides,
)
from sslmri_core.evaluation.experiment import ExperimentResult, format_interval, label_share
from sslmri_core.evaluation.leakage import RESULT_NAME as LEAKAGE_RESULT
from sslmri_core.evaluation.leakage import LeakageResult
from sslmri_core.evaluation.stats import SLICE_METRIC
from sslmri_core.progress import console
from sslmri_core.store.status import RunRecord
from sslmri_core.store.writer import RunStore

# The arms that need no weights file, in the order they run: the last child (SSL full fine-tuning, the largest
# fraction) is the newest model, the one the Runs, Confusion and Scan Explorer pages open on, and the one explained.
DEMO_ARMS = tuple(sorted(NO_WEIGHTS_ARMS, key=lambda arm: (arm in SSL_ARMS, ARM_SETTINGS[arm][1] == "full")))
BASELINE = "scratch"


@dataclass
class DemoResult:
    """What the demo stored: the experiment's summary, the audit, the leakage 2x2, the explained and mapped runs."""

    experiment: ExperimentResult
    audit: dict[str, Any]  # of the labelled set
    pool_audit: dict[str, Any]  # of the built-in pretraining pool
    leakage: LeakageResult
    gradcam_run: int | None  # the gradcam run (None when no fine-tuned run finished)
    explained_run: int | None  # the fine-tuning run it explains
    embedded: list[int] = field(default_factory=list)  # runs with a stored UMAP
    label_counts: dict[float, list[int]] = field(default_factory=dict)  # labelled images per fraction, per seed

    def answer(self) -> list[dict[str, Any]]:
        """Each SSL arm minus scratch per label fraction (slice balanced accuracy, paired over seeds)."""
        return [p for p in self.experiment.paired if p["metric"] == SLICE_METRIC and p["baseline"] == BASELINE]

    def to_json(self) -> dict[str, Any]:
        return {"experiment": self.experiment.to_json(), "audit": self.audit, "pool_audit": self.pool_audit,
                "leakage": self.leakage.to_json(),
                "gradcam_run": self.gradcam_run, "explained_run": self.explained_run, "embedded": self.embedded,
                "label_counts": {str(f): n for f, n in self.label_counts.items()}, "answer": self.answer()}


# -- the settings of each part ------------------------------------------------------------------------------
def experiment_config(cfg: DemoConfig, out: str | None) -> ExperimentConfig:
    """The demo's experiment on the built-in ``cfg.task`` set (pretraining on the built-in pool)."""
    return with_overrides(
        ExperimentConfig(), task=cfg.task, fractions=list(cfg.fractions), seeds=cfg.seeds, arms=list(DEMO_ARMS),
        pretrain_epochs=cfg.pretrain_epochs, model=cfg.model, image_size=cfg.image_size, batch_size=cfg.batch_size,
        finetune_epochs=cfg.finetune_epochs, min_steps=cfg.min_steps, preprocess=cfg.preprocess,
        precision=cfg.precision, bootstrap=cfg.bootstrap, out=out,
    )


def leakage_config(cfg: DemoConfig, root: Path, out: str | None) -> LeakageConfig:
    """The leakage demonstration on the labelled built-in set, sized down (its own small image size and budget)."""
    return with_overrides(LeakageConfig(), data=str(root), task=cfg.task, model=cfg.model,
                          image_size=cfg.leakage_image_size, batch_size=cfg.batch_size, steps=cfg.leakage_steps,
                          augment=dataclasses.replace(cfg.leakage_augment), precision=cfg.precision, out=out)


# -- the run ------------------------------------------------------------------------------------------------
def run_demo(store: RunStore, out: str | None = None, cfg: DemoConfig | None = None, *,
             show_progress: bool = True) -> DemoResult:
    """Audits, leakage demonstration, experiment, Grad-CAM and UMAP on the built-in data; print the answer.
    Run again on the same store, the experiment resumes and a finished leakage demonstration and Grad-CAM run
    with the same settings are reused (a second ``make demo`` opens the dashboard without training again)."""
    from sslmri_core.data.builtin import builtin_root, builtin_task_root
    from sslmri_core.evaluation.experiment import run_experiment
    from sslmri_core.evaluation.leakage import run_leakage

    cfg = cfg or DemoConfig()
    root, pool_root = builtin_task_root(cfg.task), builtin_root("pretrain")  # both generated on first use
    # The labelled set last: in a fresh store it is the newest data set, the one the Data page opens on.
    pool_audit, audit = _audit(store, pool_root), _audit(store, root)
    leak_cfg = leakage_config(cfg, root, out)
    done = finished_with(store, "leakage", leak_cfg)
    leakage = (LeakageResult.from_json(store.results(done.id)[LEAKAGE_RESULT]) if done is not None
               else run_leakage(leak_cfg, store, show_progress=show_progress))
    experiment = run_experiment(experiment_config(cfg, out), store, show_progress=show_progress)
    children = [r for r in store.list_runs("finetune") if r.parent_run_id == experiment.run_id
                and r.status == "finished"]
    explained = explained_run(children)
    gradcam_run = _explain(store, explained, cfg, out) if explained is not None else None
    embedded = _embed(store, [r for r in (experiment.pretrain_run,) if r is not None])
    result = DemoResult(experiment, audit, pool_audit, leakage, gradcam_run, explained, embedded,
                        label_counts(store, children))
    print_answer(result, cfg)
    return result


def _audit(store: RunStore, root: Path) -> dict[str, Any]:
    """``data audit`` of a folder, stored with its data set (what the Data page reads)."""
    from sslmri_core.data.commands import audit_folder

    summary = audit_folder(root, db=store.url)
    console.print(f"audit of {root}: {summary.get('duplicate_groups', 0)} duplicate groups, "
                  f"{summary.get('near_duplicate_groups', 0)} near-duplicate groups, "
                  f"{summary.get('subject_leaks', 0)} subjects across splits (audit {summary['audit_id']})")
    return summary


def finished_with(store: RunStore, kind: str, cfg: Any) -> RunRecord | None:
    """The newest finished ``kind`` run stored with exactly the settings ``cfg``, else None."""
    settings = json.loads(json.dumps(to_dict(cfg)))  # as the store holds it (tuples become lists)
    found = [r for r in store.list_runs(kind) if r.status == "finished" and r.config == settings]
    if not found:
        return None
    run = max(found, key=lambda r: r.id)
    console.print(f"reusing {kind} run {run.id} (finished, same settings)")
    return run


def label_counts(store: RunStore, children: list[Any]) -> dict[float, list[int]]:
    """Labelled training images of each label fraction, one count per seed (the draw varies with the seed)."""
    counts: dict[float, dict[int, int]] = {}
    for r in children:
        count = store.params(r.id).get("label_count")
        if count is not None:
            counts.setdefault(float(r.config["label_fraction"]), {})[int(r.config["seed"])] = int(float(count))
    return {f: [by_seed[s] for s in sorted(by_seed)] for f, by_seed in sorted(counts.items())}


def explained_run(children: list[Any]) -> int | None:
    """The finished fine-tuning run whose scans the demo explains: the newest SSL full fine-tune at the largest
    label fraction (else the nearest to it: an SSL arm, a larger fraction, a newer run)."""
    if not children:
        return None

    def rank(r: Any) -> tuple[bool, bool, float, int]:
        arm = str(r.config.get("arm"))
        return (arm in SSL_ARMS, ARM_SETTINGS.get(arm, ("", ""))[1] == "full",
                float(r.config.get("label_fraction", 1.0)), int(r.id))

    return int(max(children, key=rank).id)


def _explain(store: RunStore, run_id: int, cfg: DemoConfig, out: str | None) -> int:
    """Grad-CAM maps and statistics of one fine-tuned run's test scans, for the Scan Explorer."""
    from sslmri_core.explain.run import run_gradcam

    cam_cfg = with_overrides(GradcamConfig(), run=run_id, limit=cfg.gradcam_limit, out=out)
    reused = finished_with(store, "gradcam", cam_cfg)
    if reused is not None:
        return int(reused.id)
    done = run_gradcam(cam_cfg, store)
    console.print(f"grad-cam: run {run_id}, {done.summary['scans']} scans (gradcam run {done.run_id})")
    return done.run_id


def _embed(store: RunStore, runs: list[int]) -> list[int]:
    """UMAP maps of these runs' encoder features, for the Embeddings page."""
    from sslmri_core.evaluation.embed import embed_run
    from sslmri_core.store.queries import embedding_runs

    stored = embedding_runs(store.engine)
    mapped = set(stored.loc[stored["method"] == "umap", "run_id"].astype(int))
    for run_id in runs:
        if run_id in mapped:  # a rerun: the encoder has not changed, nor has its map
            console.print(f"embeddings: run {run_id} already mapped (UMAP)")
            continue
        done = embed_run(store, run_id, "umap")
        console.print(f"embeddings: run {run_id}, {done.n_points} images (UMAP)")
    return runs


# -- the answer ---------------------------------------------------------------------------------------------
def verdict(row: dict[str, Any]) -> str:
    """What one paired difference says, from its interval."""
    lo, hi = row["ci"]
    if lo is None or hi is None:
        return "no interval"
    if lo > 0:
        return "SSL better"
    if hi < 0:
        return f"{row['baseline']} better"
    return "no clear diff."


def _labels(fraction: float, counts: list[int] | None) -> str:
    """``5% (28)``: the label budget and its labelled images (per seed when the draws differ)."""
    images = "/".join(str(n) for n in dict.fromkeys(counts or []))
    return f"{label_share(fraction)} ({images})" if images else label_share(fraction)


def print_answer(result: DemoResult, cfg: DemoConfig) -> None:
    """The paired SSL - scratch differences per label fraction (mean over seeds [95% CI]), last on stderr."""
    from rich import box
    from rich.table import Table

    exp = result.experiment
    pool = exp.extra.get("pool_images")
    steps = exp.extra.get("steps") or {}
    table = Table(title=f"The answer ({cfg.task}): SSL minus {BASELINE}, test balanced accuracy", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for col in ("labels", "steps", "arm", "diff. [95% CI]", "wins", "reading"):
        table.add_column(col, justify="left" if col in ("labels", "arm", "reading") else "right", no_wrap=True)
    for p in sorted(result.answer(), key=lambda p: (p["fraction"], p["arm"])):
        fraction = float(p["fraction"])
        table.add_row(_labels(fraction, result.label_counts.get(fraction)), str(steps.get(str(p["fraction"]), "?")),
                      p["arm"], format_interval(p["mean"], p["ci"], signed=True), f"{p['wins']}/{p['n_seeds']}",
                      verdict(p))
    console.print(table)
    console.print(f"Labels: fraction of the training subjects (labelled images); every arm trains the same steps at "
                  f"a fraction. {cfg.model} at {cfg.image_size}px, SSL pretrained once on "
                  f"{pool if pool is not None else '?'} unlabeled images of other subjects. Mean over {cfg.seeds} "
                  f"seeds, paired 95% bootstrap interval over the same {_test_subjects(exp)} test subjects (the "
                  "pretraining's own randomness is not in it); wins: seeds where SSL scored higher.")
    leak = result.leakage
    console.print(f"Leakage demonstration: labels shuffled per subject score {leak.cells['image']['shuffled']:.2f} "
                  f"split by image, {leak.cells['subject']['shuffled']:.2f} split by subject "
                  f"(chance {leak.chance:.2f}).")
    console.print("Open the dashboard: streamlit run dashboard/Home.py")


def _test_subjects(exp: ExperimentResult) -> str:
    counts = {r.get("n_test_subjects") for r in exp.paired}
    return str(counts.pop()) if len(counts) == 1 else "?"
