"""Rich progress bars (on stderr, so ``--json`` output on stdout stays clean)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

console = Console(stderr=True)


class _RateColumn(ProgressColumn):
    """Images per second from the task's ``ips`` field; blank until there is one."""

    def render(self, task: Task) -> Text:
        ips = float(task.fields.get("ips") or 0.0)
        return Text(f"{ips:7.1f} img/s" if ips > 0 else "")


def make_progress(enabled: bool = True) -> Progress:
    """A bar with count, images/s (task field ``ips``), elapsed time and ETA."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        _RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
        transient=False,
    )
