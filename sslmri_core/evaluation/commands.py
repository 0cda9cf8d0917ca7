"""The commands that score, compare, explain or map runs: ``evaluate``, ``experiment``, ``gradcam``,
``leakage``, ``demo``, ``embed``.

Each function takes the command's options by their ``cli.py`` names; ``None`` means not given, so
the defaults in :mod:`sslmri_core.config` apply. Results are printed for people on stderr and, with
``json_out``, as one JSON line on stdout. Options are checked before the store is opened where the
library allows it, so a bad option never touches the store.
"""

from __future__ import annotations

from pathlib import Path

from sslmri_core.output import print_json, print_metrics


def float_list(text: str | None, option: str) -> list[float] | None:
    """'0.1,1.0' -> [0.1, 1.0]; '' -> []; None stays None (the config's default)."""
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{option} must be comma-separated numbers, got {text!r}") from None


def int_list(text: str | None, option: str) -> list[int] | None:
    """'20,50,80' -> [20, 50, 80]; '' -> []; None stays None (the config's default)."""
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{option} must be comma-separated integers, got {text!r}") from None


def evaluate(*, run: int, data: Path, class_map: str | None, bootstrap: int | None, keep_overlap: bool,
             db: str | None, out: Path | None, json_out: bool) -> None:
    """``evaluate``: score a fine-tuned run on an external folder, as an ``evaluate`` run."""

    from sslmri_core.data.sources import parse_class_map
    from sslmri_core.evaluation.external import evaluate_external
    from sslmri_core.progress import console
    from sslmri_core.store.writer import RunStore

    result = evaluate_external(RunStore(db), run, data, bootstrap=bootstrap, out=str(out) if out else None,
                               keep_overlap=keep_overlap, class_map=parse_class_map(class_map))
    for key in result.overlap[:20]:
        console.print(f"{'kept' if keep_overlap else 'left out'} {key}: copies an image the "
                      "model trained, selected or pretrained on", style="yellow")
    for item in result.unusable[:20]:
        console.print(f"unusable {item['path']}: {item['reason']}", style="yellow")
    console.print(f"{result.usable} of {result.files} files used, {len(result.unusable)} unusable")
    print_metrics(f"evaluate run {result.run_id} (model run {result.model_run})",
                  {k: v for k, v in result.metrics.items() if "/" not in k})
    if json_out:
        print_json({"run_id": result.run_id, "kind": "evaluate", "model_run": result.model_run,
                    "files": result.files, "usable": result.usable, "unusable": result.unusable,
                    "overlap_excluded": result.overlap_excluded, "overlap": result.overlap,
                    "out_dir": result.out_dir, "metrics": result.metrics})


def experiment(*, task: str | None, data: Path | None, fractions: str | None, seeds: int | None, arms: str | None,
               pretrain_run: int | None, pretrain_epochs: int | None, preset: str | None,
               unlabeled: list[Path] | None, preprocess: str | None, model: str | None,
               image_size: int | None, batch_size: int | None, epochs: int | None, min_steps: int | None,
               folds: int | None, lr: float | None, encoder_lr_scale: float | None, weights: Path | None,
               split_seed: int | None, use_given_split: bool | None, allow_leaky_split: bool | None,
               subject_pattern: str | None, class_map: str | None, precision: str | None, bootstrap: int | None,
               db: str | None, out: Path | None, json_out: bool, progress: bool) -> None:
    """``experiment``: run (or resume) the SSL-vs-supervised grid and print its summary."""
    from sslmri_core.data.sources import parse_class_map
    from sslmri_core.evaluation.experiment import resolve_experiment_config, run_experiment
    from sslmri_core.store.writer import RunStore

    store = RunStore(db)
    cfg = resolve_experiment_config(
        store, preset, task=task, data=str(data) if data else None, fractions=float_list(fractions, "--fractions"),
        seeds=seeds, arms=[a.strip() for a in arms.split(",") if a.strip()] if arms is not None else None,
        pretrain_run=pretrain_run, pretrain_epochs=pretrain_epochs, model=model, image_size=image_size,
        batch_size=batch_size, finetune_epochs=epochs, min_steps=min_steps, folds=folds, lr=lr,
        encoder_lr_scale=encoder_lr_scale, weights=str(weights) if weights else None, split_seed=split_seed,
        use_given_split=use_given_split, allow_leaky_split=allow_leaky_split, subject_pattern=subject_pattern,
        class_map=parse_class_map(class_map) or None, precision=precision, bootstrap=bootstrap,
        out=str(out) if out else None, unlabeled=[str(d) for d in unlabeled] if unlabeled else None,
        preprocess=preprocess,
    )
    result = run_experiment(cfg, store, show_progress=progress)
    if json_out:
        print_json(result.to_json())


def gradcam(*, run: int | None, split: str | None, method: str | None, target_layer: str | None,
            target_class: str | None, limit: int | None, threshold: float | None, topk_pct: float | None,
            road_percentiles: str | None, batch_size: int | None, precision: str | None, db: str | None,
            out: Path | None, json_out: bool, progress: bool) -> None:
    """``gradcam``: CAMs of a fine-tuned run's scans, with per-scan statistics and faithfulness checks."""
    from sslmri_core.config import GradcamConfig, with_overrides
    from sslmri_core.explain.run import run_gradcam, validate_gradcam
    from sslmri_core.store.writer import RunStore

    cfg = with_overrides(GradcamConfig(), run=run, split=split, method=method, target_layer=target_layer,
                         target_class=target_class, limit=limit, threshold=threshold, topk_pct=topk_pct,
                         batch_size=batch_size, precision=precision, out=str(out) if out else None,
                         road_percentiles=int_list(road_percentiles, "--road-percentiles"))
    validate_gradcam(cfg)  # before opening the store: a bad option never touches it
    result = run_gradcam(cfg, RunStore(db), show_progress=progress)
    print_metrics(f"gradcam run {result.run_id} finished ({result.out_dir})",
                  {k: v for k, v in result.summary.items() if isinstance(v, float)})
    if json_out:
        print_json(result.summary)


def leakage(*, data: Path, model: str | None, image_size: int | None, batch_size: int | None, epochs: int | None,
            steps: int | None, lr: float | None, seed: int | None, split_seed: int | None,
            subject_pattern: str | None, class_map: str | None, task: str | None, precision: str | None,
            db: str | None, out: Path | None, json_out: bool, progress: bool) -> None:
    """``leakage``: the 2x2 demonstration (subject vs image split x true vs per-subject shuffled labels)."""
    from sslmri_core.data.sources import parse_class_map
    from sslmri_core.evaluation.leakage import resolve_leakage_config, run_leakage, validate_leakage
    from sslmri_core.store.writer import RunStore

    cfg = resolve_leakage_config(
        data=str(data), model=model, image_size=image_size, batch_size=batch_size, epochs=epochs, steps=steps,
        lr=lr, seed=seed, split_seed=split_seed, subject_pattern=subject_pattern,
        class_map=parse_class_map(class_map) or None, task=task, precision=precision,
        out=str(out) if out else None,
    )
    validate_leakage(cfg)  # before opening the store: a bad option never touches it
    result = run_leakage(cfg, RunStore(db), show_progress=progress)
    if json_out:
        print_json(result.to_json())


def demo(*, db: str | None, out: Path | None, json_out: bool) -> None:
    """``demo``: on the built-in data, the data audit, an SSL-vs-supervised experiment (3 label fractions x 2
    seeds), the leakage demonstration, Grad-CAM and a UMAP; prints the paired SSL - scratch differences."""
    from sslmri_core.evaluation.demo import run_demo
    from sslmri_core.store.writer import RunStore

    result = run_demo(RunStore(db), out=str(out) if out else None)
    if json_out:
        print_json(result.to_json())


def embed(*, run: int, method: str, split: str, max_images: int, db: str | None, json_out: bool) -> None:
    """``embed``: a stored 2-D map (UMAP or t-SNE) of a run's encoder features."""
    from dataclasses import asdict

    from sslmri_core.evaluation.embed import embed_run
    from sslmri_core.progress import console
    from sslmri_core.store.writer import RunStore

    result = embed_run(RunStore(db), run, method.lower(), split, max_images=max_images)
    console.print(f"embedded run {result.run_id} ({result.method}): {result.n_points} images, "
                  f"{result.n_features} features, splits {result.splits}")
    if json_out:
        print_json(asdict(result))
