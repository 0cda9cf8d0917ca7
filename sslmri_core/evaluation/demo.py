"""``make demo``'s main job: pretrain on the built-in pool, then SSL vs scratch on one task."""

from __future__ import annotations

from rich.table import Table

from sslmri_core.config import ARM_SETTINGS, NO_WEIGHTS_ARMS, DemoConfig, PretrainConfig, with_overrides
from sslmri_core.progress import console
from sslmri_core.store.writer import RunStore
from sslmri_core.train.finetune import finetune, resolve_finetune_config
from sslmri_core.train.pretrain import pretrain
from sslmri_core.train.result import TrainResult

DEMO_ARMS = NO_WEIGHTS_ARMS


def run_demo(store: RunStore, out: str | None = None, cfg: DemoConfig | None = None) -> list[TrainResult]:
    """Pretrain once, fine-tune every arm on identical splits, print a comparison table."""
    cfg = cfg or DemoConfig()
    shared = {"model": cfg.model, "image_size": cfg.image_size, "batch_size": cfg.batch_size, "out": out}
    pre = pretrain(with_overrides(PretrainConfig(), epochs=cfg.pretrain_epochs, **shared), store)
    results = [pre]
    for arm in DEMO_ARMS:
        init, mode = ARM_SETTINGS[arm]
        ft_cfg = resolve_finetune_config(
            store, task=cfg.task, init=init, mode=mode, epochs=cfg.finetune_epochs, min_steps=cfg.min_steps,
            from_run=pre.run_id if init == "ssl" else None, **shared,
        )
        results.append(finetune(ft_cfg, store))
    _print_table(results[1:], cfg)
    _explain_all(store, results[1:], out)
    _embed_all(store, results)
    return results


def _explain_all(store: RunStore, results: list[TrainResult], out: str | None) -> None:
    """Grad-CAM maps and statistics of every fine-tuned run's test scans, for the Scan Explorer."""
    from sslmri_core.config import GradcamConfig
    from sslmri_core.explain.run import run_gradcam

    for r in results:
        done = run_gradcam(with_overrides(GradcamConfig(), run=r.run_id, out=out), store)
        console.print(f"grad-cam: run {r.run_id}, {done.summary['scans']} scans (gradcam run {done.run_id})")


def _embed_all(store: RunStore, results: list[TrainResult]) -> None:
    """UMAP maps of every run's encoder features for the dashboard's Embeddings page."""
    from sslmri_core.evaluation.embed import embed_run

    for r in results:
        done = embed_run(store, r.run_id, "umap")
        console.print(f"embeddings: run {r.run_id}, {done.n_points} images (UMAP)")


def _print_table(results: list[TrainResult], cfg: DemoConfig) -> None:
    table = Table(title=f"demo: {cfg.task}, {cfg.model} at {cfg.image_size}px (test split, slice level)")
    for col in ("run", "arm", "accuracy", "balanced acc.", "macro F1"):
        table.add_column(col)
    for arm, r in zip(DEMO_ARMS, results, strict=True):
        m = r.metrics
        table.add_row(str(r.run_id), arm, f"{m['test_accuracy']:.3f}",
                      f"{m['test_balanced_accuracy']:.3f}", f"{m['test_macro_f1']:.3f}")
    console.print(table)
    console.print("Open the dashboard: streamlit run dashboard/Home.py")
