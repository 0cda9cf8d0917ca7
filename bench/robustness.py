"""Benchmark: how far a fine-tuned model carries to scans from "another scanner".

    python bench/robustness.py --run ID [--db URL] [--out DIR] [--brightness 1.3] [--scale 2.0] [--quality 80]

Writes a shifted copy of run ID's own test split (every test scan brightened by ``--brightness`` (a gain,
clipped at white), resized by ``--scale`` (bicubic) and re-encoded as JPEG at ``--quality``; class
folders from the true labels, file names kept) to ``--out``, scores it with ``cli.py evaluate`` (a stored
``evaluate`` run: the copy's images are not copies of anything the model trained on), and prints one JSON
object: the run's own test accuracy and balanced accuracy, the shifted copy's, and the drops. The test split
is the run's, never seen in training or selection, so the drop is the shift's alone.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def shifted(path: str, brightness: float, scale: float) -> Image.Image:
    """The grey image at ``path`` (a plain image file), brighter by ``brightness`` and resized by ``scale``."""
    with Image.open(path) as img:
        grey = np.asarray(img.convert("L"), dtype=np.float32)
    bright = Image.fromarray(np.clip(grey * brightness, 0, 255).astype(np.uint8))
    size = (max(8, round(bright.width * scale)), max(8, round(bright.height * scale)))
    return bright.resize(size, Image.Resampling.BICUBIC)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=int, required=True)
    parser.add_argument("--db", default="sqlite:///runs.db")
    parser.add_argument("--out", type=Path, default=None, help="new folder for the copy (default /tmp/sslmri-shift-ID)")
    parser.add_argument("--brightness", type=float, default=1.3)
    parser.add_argument("--scale", type=float, default=2.0)
    parser.add_argument("--quality", type=int, default=80)
    args = parser.parse_args()

    from sslmri_core.store.queries import predictions_frame
    from sslmri_core.store.writer import RunStore

    out = args.out or Path(f"/tmp/sslmri-shift-{args.run}")
    if out.exists():
        raise SystemExit(f"error: {out} exists; name a new folder with --out")
    test = predictions_frame(args.db, args.run, split="test")
    if test.empty:
        raise SystemExit(f"error: run {args.run} has no test predictions")
    for scan, label in zip(test["scan"], test["true_label"], strict=True):
        if "#z=" in scan or Path(scan).suffix.lower() not in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"):
            raise SystemExit(f"error: {scan}: only plain image files are shifted")
        target = out / str(label) / (Path(scan).stem + ".jpg")
        target.parent.mkdir(parents=True, exist_ok=True)
        shifted(scan, args.brightness, args.scale).save(target, quality=args.quality)
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "evaluate", "--run", str(args.run), "--data",
                           str(out), "--db", args.db, "--json"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr.strip().splitlines()[-1])
    evaluated = json.loads(proc.stdout.strip().splitlines()[-1])
    own = RunStore(args.db).final_metrics(args.run)
    result = {"run": args.run, "evaluate_run": evaluated["run_id"], "shift": {"brightness": args.brightness,
              "scale": args.scale, "jpeg_quality": args.quality}, "n_test": len(test),
              "n_scored": evaluated["usable"] - evaluated["overlap_excluded"], "copy": str(out)}
    for metric in ("accuracy", "balanced_accuracy"):
        before, after = own[f"test_{metric}"], evaluated["metrics"][f"test_{metric}"]
        result[metric] = {"own_test": round(before, 4), "shifted": round(after, 4), "drop": round(before - after, 4)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
