"""Decoded-image cache: arrays keyed by content hash, and a stat index so unchanged files are not re-read.

One SQLite file, ``$SSLMRI_CACHE/images/cache.db``, holds two tables: ``arrays`` maps ``(content
hash, slice, size, preprocess)`` to the raw uint8 ``(size, size)`` array (slice -1 for a plain image), and
``files`` maps ``(path, size, preprocess)`` plus the file's byte count, mtime, ctime and inode to the facts
found when it was last decoded (as git's index does: a file replaced with ``cp -p`` or ``rsync -a``
keeps its size and mtime, but not its ctime). The same content is decoded once whatever its path,
and a file is decoded again only when it changes. (One file per array was tried first: creating
5,700 small files cost more than decoding the images.)
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

NO_SLICE = -1


def default_root() -> Path:
    from sslmri_core.data.builtin import cache_dir

    return cache_dir() / "images"


@dataclass(frozen=True)
class FileStat:
    path: str
    size: int
    mtime_ns: int
    ctime_ns: int = 0
    inode: int = 0

    def signature(self) -> tuple[int, int, int, int]:
        """What must be unchanged for the cached decode of this file to stand."""
        return (self.size, self.mtime_ns, self.ctime_ns, self.inode)


def stat_file(path: str) -> FileStat | None:
    """Size, modification and change times and inode, or None when the file cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return FileStat(path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


class ImageCache:
    """The cache database under ``root`` (created on first use)."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(root / "cache.db", timeout=60)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        with self.conn:
            # files_v3 / arrays_v2: keyed by the preprocessing too (a cache from before decodes once more; before
            # that, files_v2 gained ctime and inode in the stat signature)
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS files_v3 (path TEXT, img_size INTEGER, preprocess TEXT, bytes INTEGER, "
                "mtime_ns INTEGER, ctime_ns INTEGER, inode INTEGER, facts TEXT, "
                "PRIMARY KEY (path, img_size, preprocess))"
            )
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS arrays_v2 (hash TEXT, slice INTEGER, img_size INTEGER, preprocess TEXT, "
                "data BLOB, PRIMARY KEY (hash, slice, img_size, preprocess))"
            )

    def known_files(self, stats: list[FileStat], img_size: int,
                    preprocess: str = "none") -> dict[str, list[dict[str, Any]]]:
        """Facts of every file whose stat signature still matches, and whose arrays are all present."""
        where = (img_size, preprocess)
        known = {
            path: ((nbytes, mtime, ctime, inode), facts)
            for path, nbytes, mtime, ctime, inode, facts in self.conn.execute(
                "SELECT path, bytes, mtime_ns, ctime_ns, inode, facts FROM files_v3 WHERE img_size = ? "
                "AND preprocess = ?", where)
        }
        present = set(self.conn.execute("SELECT hash, slice FROM arrays_v2 WHERE img_size = ? AND preprocess = ?",
                                        where))
        out: dict[str, list[dict[str, Any]]] = {}
        for st in stats:
            hit = known.get(st.path)
            if not hit or hit[0] != st.signature():
                continue
            facts = json.loads(hit[1])
            if all(f["status"] != "ok" or (f["content_hash"], _slice(f["slice_index"])) in present for f in facts):
                out[st.path] = facts
        return out

    def store(self, img_size: int, files: list[tuple[FileStat, list[dict[str, Any]]]],
              arrays: list[tuple[str, int | None, bytes]], preprocess: str = "none") -> None:
        """Record decoded files and their arrays in one transaction."""
        with self.conn:
            self.conn.executemany(
                "INSERT OR REPLACE INTO arrays_v2 VALUES (?, ?, ?, ?, ?)",
                [(h, _slice(z), img_size, preprocess, data) for h, z, data in arrays],
            )
            self.conn.executemany(
                "INSERT OR REPLACE INTO files_v3 VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(st.path, img_size, preprocess, *st.signature(), json.dumps(facts)) for st, facts in files],
            )

    def read(self, img_size: int, keys: list[tuple[str, int | None]], preprocess: str = "none") -> np.ndarray:
        """uint8 ``(len(keys), img_size, img_size)`` for ``(content hash, slice index)`` keys, in order."""
        out = np.empty((len(keys), img_size, img_size), dtype=np.uint8)
        query = "SELECT data FROM arrays_v2 WHERE hash = ? AND slice = ? AND img_size = ? AND preprocess = ?"
        for i, (h, z) in enumerate(keys):
            row = self.conn.execute(query, (h, _slice(z), img_size, preprocess)).fetchone()
            out[i] = np.frombuffer(row[0], dtype=np.uint8).reshape(img_size, img_size)
        return out

    def close(self) -> None:
        self.conn.close()


def _slice(index: int | None) -> int:
    return NO_SLICE if index is None else int(index)
