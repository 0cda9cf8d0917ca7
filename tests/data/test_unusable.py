"""unusable.tsv lists every file a run left out; names with tabs, quotes or newlines read back whole."""

from __future__ import annotations

import csv
from pathlib import Path

from sslmri_core.data.unusable import write_unusable


def test_names_with_tabs_quotes_and_newlines_read_back_whole(tmp_path: Path) -> None:
    rows = [("/data/glioma/a\tb.png", "not a PNG image"), ('/data/glioma/say "cheese".png', "empty file (0 bytes)"),
            ("/data/glioma/two\nlines.png", "broken symbolic link"), ("/data/plain.png", "reason\twith a tab")]
    write_unusable(tmp_path, rows)
    with (tmp_path / "unusable.tsv").open(encoding="utf-8", newline="") as f:
        read = list(csv.reader(f, delimiter="\t"))
    assert read[0] == ["path", "reason"] and [tuple(r) for r in read[1:]] == rows


def test_nothing_to_list_writes_nothing(tmp_path: Path) -> None:
    write_unusable(tmp_path / "run-1", [])
    assert not (tmp_path / "run-1").exists()
