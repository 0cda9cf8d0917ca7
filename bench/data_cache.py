"""Benchmark: manifest + cache build against a plain PIL loop, measured in the same run.

    python bench/data_cache.py [FOLDER ...] [--repeats 3] [--size 128]

Prints one JSON object. For each folder: images/s of (a) a plain single-process loop that opens
every image with PIL, converts it to grayscale and resizes it (what a notebook does, without even
hashing or padding), and (b) sslmri's first build of the manifest and image cache (hash, header,
decode, pad, resize, write; worker processes) into an empty cache; then the seconds of a re-run
with nothing changed. Medians over ``--repeats`` runs; the ratio is (b) / (a).
Targets: first build >= 1,000 images/s on 2 cores, re-run < 5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image

from sslmri_core.data.ingest import build_manifest
from sslmri_core.data.sources import discover

DEFAULT_FOLDERS = ["../shared/data/tumor/Training", "../shared/data/alzheimer_oasis"]


def plain_pil_loop(paths: list[str], size: int) -> float:
    """Seconds for open + convert('L') + resize of every file, one process."""
    start = time.perf_counter()
    for path in paths:
        with Image.open(path) as img:
            img.convert("L").resize((size, size), Image.BILINEAR)
    return time.perf_counter() - start


def sslmri_build(folder: str, size: int) -> tuple[float, float, int]:
    """Seconds of a first build into an empty cache and of a re-run; images built."""
    cache = Path(tempfile.mkdtemp(prefix="sslmri-bench-cache-"))
    try:
        start = time.perf_counter()
        manifest, images = build_manifest(folder, size, cache_root=cache)
        first = time.perf_counter() - start
        start = time.perf_counter()
        build_manifest(folder, size, cache_root=cache)
        rerun = time.perf_counter() - start
        return first, rerun, len(images)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def bench_folder(folder: str, size: int, repeats: int) -> dict[str, object]:
    paths = [f.path for f in discover(folder).files if f.kind == "image"]
    base, first, rerun = [], [], []
    n_images = 0
    for _ in range(repeats):
        base.append(len(paths) / plain_pil_loop(paths, size))
        t_first, t_rerun, n_images = sslmri_build(folder, size)
        first.append(n_images / t_first)
        rerun.append(t_rerun)
    baseline = statistics.median(base)
    ours = statistics.median(first)
    return {
        "folder": folder,
        "files": len(paths),
        "images": n_images,
        "baseline_plain_pil_images_per_s": round(baseline, 1),
        "first_build_images_per_s": round(ours, 1),
        "ratio_vs_baseline": round(ours / baseline, 2),
        "rerun_seconds": round(statistics.median(rerun), 3),
        "runs": {"baseline": [round(x, 1) for x in base], "first_build": [round(x, 1) for x in first],
                 "rerun_s": [round(x, 3) for x in rerun]},
        "meets_targets": ours >= 1000 and statistics.median(rerun) < 5,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="*", default=DEFAULT_FOLDERS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    results = [bench_folder(f, args.size, args.repeats) for f in args.folders if Path(f).is_dir()]
    print(json.dumps({
        "benchmark": "data_cache",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "size": args.size,
        "repeats": args.repeats,
        "results": results,
    }))


if __name__ == "__main__":
    main()
