"""The ``runs`` and ``db`` commands: list and show the runs in a store, upgrade its schema.

Each function takes the command's options by their ``cli.py`` names, prints for people on stderr
and, with ``json_out``, one JSON line on stdout. Listing marks runs whose process died as
``interrupted`` in the store first (best effort: a read-only role just reads them so).
"""

from __future__ import annotations

import contextlib
from typing import Any

from sslmri_core.output import json_text, print_json, print_metrics


def run_summary(store: Any, record: Any) -> dict[str, Any]:
    """A run's row in ``runs list`` (and the head of ``runs show``), with its final metrics."""
    return {"run_id": record.id, "kind": record.kind, "status": record.status, "task": record.task,
            "parent_run_id": record.parent_run_id, "checkpoint": record.checkpoint_path,
            "created_at": record.created_at.isoformat() if record.created_at else None,
            "error": record.error, "metrics": store.final_metrics(record.id)}


def leakage(store: Any, record: Any) -> dict[str, Any]:
    """``leakage_prone`` and ``leakage_reasons`` of a run; a grid run (experiment, leakage) has its children's too."""
    from sslmri_core.store.status import leakage_reasons

    reasons = leakage_reasons(store.params(record.id))
    if record.kind in ("experiment", "leakage"):
        for child in store.list_runs("finetune"):
            if child.parent_run_id == record.id:
                reasons += [f"child run {child.id}: {r}" for r in leakage_reasons(store.params(child.id))]
    return {"leakage_prone": bool(reasons), "leakage_reasons": reasons}


def store_stale_runs(store: Any) -> None:
    """Store ``interrupted`` for runs whose process died (no heartbeat); best effort: a read-only role just reads."""
    from sqlalchemy.exc import SQLAlchemyError

    with contextlib.suppress(SQLAlchemyError):  # the records still read as interrupted
        store.mark_stale_interrupted()


def runs_list(*, kind: str | None, db: str | None, json_out: bool) -> None:
    """``runs list``: a table of the runs (or, with ``json_out``, their summaries as one JSON list)."""
    from rich.table import Table

    from sslmri_core.progress import console
    from sslmri_core.store.writer import RunStore

    store = RunStore(db, create=False)
    store_stale_runs(store)
    rows = [run_summary(store, r) for r in store.list_runs(kind)]
    if json_out:
        print_json(rows)
        return
    if not rows:
        console.print("No runs yet: run `make demo`, or `python cli.py pretrain` then "
                      "`python cli.py finetune --from-run ID`.")
        return
    table = Table(title=f"runs in {store.display_url}")
    for col in ("id", "kind", "status", "task", "parent", "created", "test acc", "test macro F1", "loss"):
        table.add_column(col)
    for r in rows:
        m = r["metrics"]

        def fmt(key: str, m: dict[str, float] = m) -> str:
            return f"{m[key]:.3f}" if key in m else ""

        table.add_row(str(r["run_id"]), r["kind"], r["status"], r["task"] or "", str(r["parent_run_id"] or ""),
                      (r["created_at"] or "")[:19], fmt("test_accuracy"), fmt("test_macro_f1"), fmt("epoch_loss"))
    console.print(table)


def runs_show(*, run_id: int, db: str | None, json_out: bool) -> None:
    """``runs show``: one run's status, leakage, config and final metrics."""
    from sslmri_core.progress import console
    from sslmri_core.store.writer import RunStore

    store = RunStore(db, create=False)
    store_stale_runs(store)
    record = store.get_run(run_id)
    summary = {**run_summary(store, record), **leakage(store, record), "config": record.config,
               "device": record.device, "git_sha": record.git_sha, "out_dir": record.out_dir}
    if json_out:
        print_json(summary)
        return
    console.print_json(json_text({k: v for k, v in summary.items() if k != "metrics"}))
    print_metrics(f"run {run_id} metrics", summary["metrics"])


def db_upgrade(*, db: str | None, json_out: bool) -> None:
    """``db upgrade``: upgrade the schema to the newest revision, reporting the revisions before and after."""
    from sslmri_core.progress import console
    from sslmri_core.store.migrate import upgrade_store

    report = upgrade_store(db)
    console.print(f"{report['db']}: revision {report['before'] or '(empty)'} -> {report['after']} "
                  + ("(already current)" if report["before"] == report["after"] else f"(head {report['head']})"))
    if json_out:
        print_json(report)
