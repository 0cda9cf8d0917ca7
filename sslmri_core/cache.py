"""Decoded-image cache: arrays keyed by content hash, and a stat index so unchanged files are not re-read.

Layout under ``$SSLMRI_CACHE/images``: ``<size>/<hh>/<hash>[-z<k>].u8`` holds one raw uint8
``(size, size)`` array (a NIfTI slice has its slice index in the name); ``index.db`` (SQLite) maps
``(path, size, bytes, mtime)`` to the facts found when the file was last decoded. The same content
is decoded once whatever its path, and a file is decoded again only when it changes.
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


def default_root() -> Path:
    from sslmri_core.builtin import cache_dir

    return cache_dir() / "images"


@dataclass(frozen=True)
class FileStat:
    path: str
    size: int
    mtime_ns: int


def stat_file(path: str) -> FileStat | None:
    """Size and modification time, or None when the file cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return FileStat(path, st.st_size, st.st_mtime_ns)


def array_path(root: Path, size: int, content_hash: str, slice_index: int | None) -> Path:
    name = content_hash if slice_index is None else f"{content_hash}-z{slice_index}"
    return root / str(size) / content_hash[:2] / f"{name}.u8"


def write_array(root: Path, size: int, content_hash: str, slice_index: int | None, array: np.ndarray) -> None:
    """Store one ``(size, size)`` uint8 array atomically (concurrent writers of one hash are harmless)."""
    path = array_path(root, size, content_hash, slice_index)
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    np.ascontiguousarray(array, dtype=np.uint8).tofile(tmp)
    os.replace(tmp, path)


def read_array(root: Path, size: int, content_hash: str, slice_index: int | None) -> np.ndarray:
    return np.fromfile(array_path(root, size, content_hash, slice_index), dtype=np.uint8).reshape(size, size)


class StatIndex:
    """``(path, size)`` -> the facts of the file as it was (bytes and mtime must match to count)."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(root / "index.db", timeout=30)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS files (path TEXT, img_size INTEGER, bytes INTEGER, mtime_ns INTEGER, "
            "facts TEXT, PRIMARY KEY (path, img_size))"
        )

    def lookup(self, stat: FileStat, img_size: int) -> list[dict[str, Any]] | None:
        row = self.conn.execute(
            "SELECT bytes, mtime_ns, facts FROM files WHERE path = ? AND img_size = ?", (stat.path, img_size)
        ).fetchone()
        if row is None or row[0] != stat.size or row[1] != stat.mtime_ns:
            return None
        return json.loads(row[2])

    def lookup_many(self, stats: list[FileStat], img_size: int) -> dict[str, list[dict[str, Any]]]:
        """Facts of every file whose bytes and mtime still match, in one query."""
        known = {
            path: (nbytes, mtime, facts)
            for path, nbytes, mtime, facts in self.conn.execute(
                "SELECT path, bytes, mtime_ns, facts FROM files WHERE img_size = ?", (img_size,)
            )
        }
        out: dict[str, list[dict[str, Any]]] = {}
        for st in stats:
            hit = known.get(st.path)
            if hit and hit[0] == st.size and hit[1] == st.mtime_ns:
                out[st.path] = json.loads(hit[2])
        return out

    def store(self, entries: list[tuple[FileStat, list[dict[str, Any]]]], img_size: int) -> None:
        with self.conn:
            self.conn.executemany(
                "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?)",
                [(st.path, img_size, st.size, st.mtime_ns, json.dumps(facts)) for st, facts in entries],
            )

    def close(self) -> None:
        self.conn.close()
