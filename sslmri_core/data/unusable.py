"""The files a run could not use (or chose to leave out), listed with their reasons beside its outputs."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path


def write_unusable(out_dir: Path, unusable: Iterable[tuple[str, str]], name: str = "unusable.tsv") -> None:
    """Write ``(path, reason)`` rows to ``out_dir/name`` (tab-separated, with a header); nothing when empty.

    The csv module quotes names holding tabs, quotes or newlines, so every row reads back whole.
    """
    rows = list(unusable)
    if rows:
        out_dir.mkdir(parents=True, exist_ok=True)
        with (out_dir / name).open("w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, delimiter="\t", lineterminator="\n")
            writer.writerow(["path", "reason"])
            writer.writerows(rows)
