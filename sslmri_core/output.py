"""What a command prints: one JSON object on stdout (``--json``), tables and notes on stderr.

Stdout carries nothing but the ``--json`` line, so scripts can read it; everything for people goes
through :data:`sslmri_core.progress.console` (stderr). Non-finite floats become ``null`` in JSON.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any

import click


def jsonable(value: Any) -> Any:
    """``value`` with every NaN/inf float (nested in dicts, lists, tuples) replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def json_text(obj: Any) -> str:
    """``obj`` as one line of JSON (non-finite floats as null, anything else unknown as its ``str``)."""
    return json.dumps(jsonable(obj), default=str)


def print_json(obj: Any) -> None:
    """Print ``obj`` as the last line of stdout (after flushing what was printed before it)."""
    sys.stdout.flush()
    click.echo(json_text(obj))


def result_dict(result: Any) -> dict[str, Any]:
    """The ``--json`` object of a training run's result (``TrainResult``)."""
    return {"run_id": result.run_id, "kind": result.kind, "status": result.status,
            "checkpoint": result.checkpoint, "out_dir": result.out_dir, "metrics": result.metrics}


def print_metrics(title: str, metrics: dict[str, float]) -> None:
    """A two-column table of ``metrics`` on stderr; per-class metrics (``name/class``) are left to --json."""
    from rich.table import Table

    from sslmri_core.progress import console

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        if "/" not in key:  # per-class metrics are in the store and in --json
            table.add_row(key, f"{value:.4f}")
    console.print(table)
