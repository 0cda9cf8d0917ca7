"""Run a ``cli.py`` command in-process and read its ``--json`` line."""

from __future__ import annotations

import json

from typer.testing import CliRunner


def invoke(args: list[str]) -> tuple[int, dict | None, str]:
    """Exit code, the last stdout line parsed as JSON (None if it is not JSON), and stderr."""
    from cli import app

    result = CliRunner().invoke(app, args)
    lines = [ln for ln in result.stdout.splitlines() if ln.strip()]
    try:
        parsed = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        parsed = None
    return result.exit_code, parsed, result.stderr
