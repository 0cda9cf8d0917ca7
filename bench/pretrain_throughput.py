"""SimCLR pretraining throughput: sslmri's loop vs the notebook-style reference, on one machine.

    python bench/pretrain_throughput.py                       # CPU, ResNet-50, 128 px, batch 64
    python bench/pretrain_throughput.py --device cuda --batch 512 --steps 20
    python bench/pretrain_throughput.py --cli --batch 512 --steps 300   # `cli.py pretrain` itself (GPU)

(a) ``sslmri``: the pretraining step of ``sslmri_core.train.simclr`` (the code ``pretrain`` runs) from
uint8 images in memory (what the image cache holds): batches augmented on the training device,
both views in one forward pass, ``--precision`` (default ``auto``) and channels-last.
(b) ``reference``: torchvision ``ImageFolder`` + per-image PIL transforms (two views) in
DataLoader workers, two separate forward passes, fp32 - the way the published notebooks do it.

Each pipeline runs in its own child process (so each peak RSS is its own, DataLoader workers
included), one after the other (the reference's loader workers never run while sslmri is timed):
warm-up steps, then ``--repeats`` timed runs of ``--steps`` steps; images/s counts both views; the JSON's last line
reports medians and the ratio. Needs only torch, torchvision, timm,
numpy and pillow (no run store, no pandas).

``--cli`` times the product instead: ``cli.py pretrain`` on a generated folder (``--no-monitor``,
``--include-test``, the device ``pretrain`` picks, ``--compile`` from ``--cli-compile``), then reads the
run's per-step ``images_per_s`` (both views, from the uint8 pool through augmentation, forward,
backward and the optimiser step) from its SQLite store: the steady rate after ``--skip-steps``
(compilation, warm-up), the rate over every step, and the wall times of the run and the command,
against ``--target`` views/s.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_image_folder(root: Path, n: int, size: int = 256) -> Path:
    """``n`` grayscale JPEGs (smooth blobs + noise, ``size`` px) in two class folders."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        folder = root / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        cx, cy, r = rng.uniform(0.3, 0.7, 2).tolist() + [rng.uniform(0.2, 0.35)]
        img = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r)) * 200 + rng.normal(0, 8, (size, size))
        Image.fromarray(img.clip(0, 255).astype(np.uint8), mode="L").save(folder / f"img{i:05d}.jpg", quality=90)
    return root


def load_uint8(root: Path, size: int) -> Any:
    """Every image of the folder as uint8 ``(N, size, size)``: what sslmri's image cache holds (decoded once)."""
    import numpy as np
    from PIL import Image

    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    out = np.empty((len(paths), size, size), dtype=np.uint8)
    for i, p in enumerate(paths):
        img = Image.open(p).convert("L")
        side = max(img.size)
        square = Image.new("L", (side, side))
        square.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
        out[i] = np.asarray(square.resize((size, size), Image.BILINEAR))
    return out


class RssSampler:
    """Peak resident memory of this process plus its live children (DataLoader workers), sampled every 0.2 s."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _rss(pid: int) -> int:
        try:
            with open(f"/proc/{pid}/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            total = self._rss(os.getpid()) + sum(self._rss(c.pid) for c in multiprocessing.active_children())
            self.peak = max(self.peak, total)
            time.sleep(0.2)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        own_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # the sampler may miss a short peak
        self.peak = max(self.peak, own_peak)


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def run_sslmri(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    import torch

    from sslmri_core.config import AugmentConfig
    from sslmri_core.train.models import SimCLRModel, create_encoder
    from sslmri_core.train.optim import make_optimizer
    from sslmri_core.train.runtime import grad_scaler, resolve_precision
    from sslmri_core.train.simclr import forward_loss, optimizer_step

    device = torch.device(args.device)
    precision = resolve_precision(args.precision, device)
    images = torch.from_numpy(load_uint8(folder, args.image_size))
    if device.type == "cuda":
        images = images.pin_memory()
    torch.manual_seed(0)
    model = SimCLRModel(create_encoder(args.model)).to(device).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, "lars" if args.batch >= 256 else "adamw", 1e-3, 1e-6)
    scaler = grad_scaler(device, precision)
    net = torch.compile(model) if args.compile else model
    gen, aug, order = torch.Generator().manual_seed(0), AugmentConfig(), torch.Generator().manual_seed(1)

    def step() -> None:
        idx = torch.randint(0, len(images), (args.batch,), generator=order)
        loss, _ = forward_loss(net, images[idx], aug, 0.2, gen, device, precision)
        float(loss.detach())  # the real loop reads the loss every step (NaN check, logging)
        optimizer_step(loss, optimizer, scaler)

    return _timed(step, args, device) | {"precision": precision, "channels_last": True, "forward_passes": 1,
                                          "augment_on": str(device)}


def run_reference(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    import torch
    from torchvision import datasets, transforms

    from sslmri_core.train.losses import nt_xent
    from sslmri_core.train.models import SimCLRModel, create_encoder

    device = torch.device(args.device)
    s = args.image_size
    view = transforms.Compose([
        transforms.Grayscale(1),
        transforms.RandomResizedCrop(s, scale=(0.35, 1.0)),
        transforms.RandomHorizontalFlip(),
        transforms.RandomRotation(10),
        transforms.ColorJitter(brightness=0.2, contrast=0.3),
        transforms.RandomApply([transforms.GaussianBlur(9, (0.1, 1.2))], p=0.5),
        transforms.ToTensor(),
        transforms.Normalize([0.2], [0.25]),
    ])

    class TwoViews:
        def __call__(self, img: Any) -> tuple[Any, Any]:
            return view(img), view(img)

    loader = torch.utils.data.DataLoader(
        datasets.ImageFolder(str(folder), transform=TwoViews()), batch_size=args.batch, shuffle=True,
        num_workers=args.workers, drop_last=True, persistent_workers=args.workers > 0,
        pin_memory=device.type == "cuda",
    )
    torch.manual_seed(0)
    model = SimCLRModel(create_encoder(args.model)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batches = iter(loader)

    def step() -> None:
        nonlocal batches
        try:
            (v1, v2), _ = next(batches)
        except StopIteration:
            batches = iter(loader)
            (v1, v2), _ = next(batches)
        v1, v2 = v1.to(device, non_blocking=True), v2.to(device, non_blocking=True)
        loss = nt_xent(model(v1), model(v2), 0.2)  # two forward passes, fp32
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        float(loss.detach())

    return _timed(step, args, device) | {"precision": "fp32", "channels_last": False, "forward_passes": 2,
                                          "loader_workers": args.workers}


def _timed(step: Any, args: argparse.Namespace, device: Any) -> dict[str, Any]:
    """Warm-up, then ``repeats`` x ``steps`` timed steps; views/s counts both views.

    Driven by the parent (``--only``): each timed run starts when a line arrives on stdin, and its
    rate is printed at once.
    """
    rates = []
    with RssSampler() as rss:
        for _ in range(args.warmup):
            step()
        _sync(device)
        print(json.dumps({"ready": True}), flush=True)
        for _ in range(args.repeats):
            sys.stdin.readline()
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            _sync(device)
            rates.append(2 * args.batch * args.steps / (time.perf_counter() - start))
            print(json.dumps({"rate": rates[-1]}), flush=True)
    out = {"views_per_s": statistics.median(rates), "runs_views_per_s": [round(r, 2) for r in rates],
           "peak_rss_gb": round(rss.peak / 1e9, 3)}
    if device.type == "cuda":
        import torch

        out["peak_gpu_mem_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 3)
    return out


def run_cli(args: argparse.Namespace) -> dict[str, Any]:
    """``cli.py pretrain`` on a generated (or ``--data``) folder; rates from the run's stored step metrics."""
    import sqlite3

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        folder = args.data or make_image_folder(Path(tmp) / "images", args.n_images or max(8192, 16 * args.batch),
                                                size=args.image_size)
        generated_s = time.perf_counter() - start
        db = Path(tmp) / "runs.db"
        cmd = [sys.executable, str(ROOT / "cli.py"), "pretrain", "--data", str(folder), "--model", args.model,
               "--image-size", str(args.image_size), "--batch-size", str(args.batch), "--max-steps", str(args.steps),
               "--epochs", "100000", "--precision", args.precision, "--no-monitor", "--include-test",
               "--compile", args.cli_compile, "--checkpoint-minutes", "0", "--db", f"sqlite:///{db}",
               "--out", str(Path(tmp) / "runs"),
               "--no-progress", "--json"]
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        command_s = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"cli.py pretrain failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        with sqlite3.connect(db) as con:
            run_id, started, ended, device = con.execute(
                "select id, started_at, ended_at, device from runs where kind='pretrain' order by id desc").fetchone()
            rates = [v for (v,) in con.execute("select value from metrics where run_id=? and key='images_per_s' "
                                                "order by step", (run_id,))]
            params = dict(con.execute("select key, value from params where run_id=?", (run_id,)).fetchall())
    from datetime import datetime

    views = 2 * args.batch * int(params.get("world_size", 1))
    steady = rates[args.skip_steps :]

    def rate(points: list[float]) -> float:  # views over the summed step times
        return len(points) * views / sum(views / r for r in points) if points else float("nan")

    run_s = (datetime.fromisoformat(ended) - datetime.fromisoformat(started)).total_seconds()
    return {
        "steps": len(rates), "views_per_step": views, "views_per_s": round(rate(steady), 1),
        "views_per_s_every_step": round(rate(rates), 1), "first_step_s": round(views / rates[0], 2),
        "run_views_per_s": round(len(rates) * views / run_s, 1), "run_wall_s": round(run_s, 1),
        "command_wall_s": round(command_s, 1), "data_generated_s": round(generated_s, 1),
        "target_views_per_s": args.target, "meets_target": rate(steady) >= args.target,
        "compiled": params.get("compiled"), "precision": params.get("precision"),
        "optimizer": params.get("optimizer"), "n_images": params.get("n_images"),
        "device": device,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (the median is reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--precision", default="auto", help="sslmri's precision: auto | bf16 | fp16 | fp32")
    parser.add_argument("--workers", type=int, default=None, help="reference DataLoader workers (default: CPU count)")
    parser.add_argument("--data", type=Path, default=None, help="ImageFolder ROOT/<class>/...; default: generated")
    parser.add_argument("--n-images", type=int, default=None, help="generated images (default: max(512, 4 x batch))")
    parser.add_argument("--compile", action="store_true", help="torch.compile sslmri's model")
    parser.add_argument("--cli", action="store_true", help="time `cli.py pretrain` itself (see the module doc)")
    parser.add_argument("--cli-compile", default="auto", help="--cli: pretrain's --compile (auto | on | off)")
    parser.add_argument("--skip-steps", type=int, default=30, help="--cli: steps left out of the steady rate")
    parser.add_argument("--target", type=float, default=20000.0, help="--cli: views/s to reach")
    parser.add_argument("--only", choices=["sslmri", "reference"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.workers is None:
        args.workers = min(8, os.cpu_count() or 1)
    if args.cli:
        import torch

        print(json.dumps({"bench": "cli_pretrain", "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available()
                          else None, "torch": torch.__version__, "model": args.model, "image_size": args.image_size,
                          "batch": args.batch, "loadavg_end": os.getloadavg()} | run_cli(args)))
        return

    if args.only:  # child process: one pipeline, one JSON line
        folder = args.data
        result = run_sslmri(args, folder) if args.only == "sslmri" else run_reference(args, folder)
        print(json.dumps(result))
        return

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.data or make_image_folder(Path(tmp) / "images", args.n_images or max(512, 4 * args.batch))
        results: dict[str, Any] = {}
        # One pipeline at a time: the reference's DataLoader workers would otherwise prefetch (and take
        # CPU) while sslmri is being timed, which flatters the reference on a small machine.
        for name in ("sslmri", "reference"):
            cmd = [sys.executable, __file__, "--only", name, "--data", str(folder)] + [
                a for a in sys.argv[1:] if a not in ("--data", str(args.data))
            ]
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

            def read() -> dict[str, Any]:
                line = proc.stdout.readline()  # type: ignore[union-attr]
                if not line:
                    raise SystemExit(f"{name} failed with exit code {proc.wait()}")
                return json.loads(line)

            read()  # warmed up
            for _ in range(args.repeats):
                proc.stdin.write("go\n")  # type: ignore[union-attr]
                proc.stdin.flush()  # type: ignore[union-attr]
                print(f"{name}: {read()}", file=sys.stderr, flush=True)
            results[name] = read()
            proc.wait()

    import torch

    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else f"cpu x {os.cpu_count()}"
    print(json.dumps({
        "bench": "pretrain_throughput", "device": device_name, "torch": torch.__version__, "model": args.model,
        "image_size": args.image_size, "batch": args.batch, "steps": args.steps, "repeats": args.repeats,
        "data": str(args.data) if args.data else "generated 256px JPEGs", "loadavg_end": os.getloadavg(),
        "sslmri": results["sslmri"], "reference": results["reference"],
        "ratio": round(results["sslmri"]["views_per_s"] / results["reference"]["views_per_s"], 2),
    }))


if __name__ == "__main__":
    main()
