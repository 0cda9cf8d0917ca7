"""The ``data`` commands: write the synthetic set, check a folder (manifest), audit it (duplicates, leaks).

Each function takes the command's options by their ``cli.py`` names (``None``: not given, the
config default applies), prints for people on stderr and, with ``json_out``, one JSON line on stdout.
Errors are raised (:mod:`sslmri_core.errors`); ``cli.py`` turns them into one line and an exit code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sslmri_core.errors import UsageError
from sslmri_core.output import json_text, print_json

EXPORT_SUFFIXES = (".csv", ".parquet")


def synth(*, out: Path, task: str | None, subjects: int | None, slices_per_subject: int | None, size: int | None,
          seed: int | None, json_out: bool) -> None:
    """``data synth``: write the built-in synthetic brain-MRI set into ``out``."""
    from sslmri_core.config import TASKS, SynthConfig, check_values, with_overrides
    from sslmri_core.data.builtin import generate_with_progress
    from sslmri_core.progress import console

    cfg = with_overrides(SynthConfig(), task=task, subjects=subjects, slices_per_subject=slices_per_subject,
                         size=size, seed=seed)
    check_values(cfg)
    if cfg.task != "all" and cfg.task not in TASKS:
        raise ValueError(f"--task must be one of {', '.join([*TASKS, 'all'])}, got {cfg.task!r}")
    for name, value, low in (("--subjects", cfg.subjects, 1), ("--slices-per-subject", cfg.slices_per_subject, 1),
                             ("--size", cfg.size, 16)):
        if value < low:
            raise ValueError(f"{name} must be at least {low}, got {value}")
    summary = generate_with_progress(out, cfg)
    console.print(f"wrote {summary.images} images of {summary.subjects} subjects to {out} in {summary.seconds:.1f}s")
    if json_out:
        print_json({"out": str(summary.out), "tasks": summary.tasks, "subjects": summary.subjects,
                    "images": summary.images, "seconds": summary.seconds})


def check(*, folder: Path, subject_pattern: str | None, class_map: str | None, image_size: int | None,
          export: Path | None, db: str | None, json_out: bool) -> None:
    """``data check``: build and store the manifest (and image cache); a DataError (exit 2) when no image is usable."""
    from sslmri_core.config import FinetuneConfig
    from sslmri_core.data.ingest import build_manifest
    from sslmri_core.data.sources import DataError, parse_class_map
    from sslmri_core.progress import console
    from sslmri_core.store.writer import RunStore

    if export is not None:
        check_export(export)
    manifest, _ = build_manifest(folder, image_size or FinetuneConfig().image_size, subject_pattern,
                                 parse_class_map(class_map), progress=None)
    report = manifest.check_summary()
    report["dataset_id"] = RunStore(db).save_manifest(manifest) if manifest.rows else None
    if export:
        console.print(f"manifest written to {manifest.export(export)}")
    print_check(report)
    if json_out:
        print_json(report)
    if not report["usable"]:
        raise DataError(f"no usable images in {folder} ({report['files']} files found)")


def check_export(path: Path) -> None:
    """Refuse (before any work) an ``--export`` file that could not be written: another suffix, a missing folder."""
    if path.suffix.lower() not in EXPORT_SUFFIXES:
        raise UsageError(f"--export must end in {' or '.join(EXPORT_SUFFIXES)}, got {path.name}")
    if not path.expanduser().parent.is_dir():
        raise UsageError(f"--export {path}: no such folder {path.expanduser().parent}")


def print_check(report: dict[str, Any]) -> None:
    """The ``data check`` report for people: images per class, subjects, split folders, unusable files."""
    from rich.table import Table

    from sslmri_core.progress import console

    table = Table(title=f"{report['root']}: {report['usable']} of {report['files']} files usable, "
                        f"{report['images']} images")
    table.add_column("class")
    table.add_column("images", justify="right")
    for name, count in report["classes"].items():
        table.add_row(name, str(count))
    console.print(table)
    if report["split_level"] == "subject":
        console.print(f"subjects: {report['subjects']} (pattern: {report['subject_pattern']}); splits are by subject")
    else:
        console.print("no subject ids in the file names: splits will be image-level (leakage-prone); "
                      "pass --subject-pattern REGEX if the names carry one", style="bold red")
    if report["given_split"]:
        console.print(f"given split folders: {report['given_split']} (honour them with --use-given-split)")
    for note in report["notes"]:
        console.print(f"note: {note}")
    for item in report["unusable"][:20]:
        console.print(f"unusable {item['path']}: {item['reason']}", style="yellow")
    if len(report["unusable"]) > 20:
        console.print(f"... and {len(report['unusable']) - 20} more unusable files (see --json or --export)")


def audit(*, folder: Path, subject_pattern: str | None, split_seed: int | None, use_given_split: bool,
          near_threshold: int, db: str | None, json_out: bool) -> None:
    """``data audit``: audit the folder against the split sslmri draws (or none), store the audit, print its summary."""
    from sslmri_core.progress import console

    summary = audit_folder(folder, subject_pattern=subject_pattern, split_seed=split_seed,
                           use_given_split=use_given_split, near_threshold=near_threshold, db=db)
    console.print_json(json_text(summary))
    if json_out:
        print_json(summary)


def audit_folder(folder: Path, *, subject_pattern: str | None = None, split_seed: int | None = None,
                 use_given_split: bool = False, near_threshold: int = 4, db: str | None = None) -> dict[str, Any]:
    """Duplicates, near-duplicates, subject leaks, confounds and balance of ``folder``, stored with its manifest.

    Leaks are checked across the group split sslmri draws (``split_seed``, default the fine-tuning
    one); with ``use_given_split`` across the folder's own Training/Testing folders instead.
    Returns the audit's summary with its ``dataset_id`` and ``audit_id`` in the store.
    """
    from sslmri_core.config import FinetuneConfig
    from sslmri_core.data.audit import audit_dataset
    from sslmri_core.data.groups import GROUP_SIZE
    from sslmri_core.data.loading import load_folder
    from sslmri_core.data.splits import split_for
    from sslmri_core.store.writer import RunStore

    data = load_folder(folder, GROUP_SIZE, subject_pattern)  # the decode the split's groups use
    manifest = data.manifests[0]
    split_of = None
    if not use_given_split:  # check the split sslmri itself draws (given split folders are the default's input only)
        split = split_for(data, split_seed if split_seed is not None else FinetuneConfig().split_seed)
        split_of = dict(zip((it.key for it in data.items), split.assignment(len(data.items)), strict=False))
    report = audit_dataset(manifest, data.images, split_of, near_threshold=near_threshold)
    store = RunStore(db)
    dataset_id = store.save_manifest(manifest)
    return {**report.summary, "dataset_id": dataset_id,
            "audit_id": store.save_audit(dataset_id, report.summary, report.to_json())}
