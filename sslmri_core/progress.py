"""The console and Rich progress bars (on stderr, so ``--json`` output on stdout stays clean).

Markup is off: file names, class folders, decoder messages and store text are printed as they are
(a PNG whose bad chunk is quoted as ``[/]a`` must not end the command). Style whole lines with
``console.print(text, style=...)``, never with ``[bold]`` tags.
"""

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

console = Console(stderr=True, markup=False)


class _RateColumn(ProgressColumn):
    """Images per second from the task's ``ips`` field; blank until there is one."""

    def render(self, task: Task) -> Text:
        ips = float(task.fields.get("ips") or 0.0)
        return Text(f"{ips:7.1f} img/s" if ips > 0 else "")


def make_progress(enabled: bool = True) -> Progress:
    """A bar with count, images/s (task field ``ips``), elapsed time and ETA."""
    return Progress(
        TextColumn("{task.description}", style="bold", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}", markup=False),
        _RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
        transient=False,
    )
