"""Benchmark: Grad-CAM ms per scan, batched over a test split and for one interactive scan.

    python bench/gradcam.py [--model resnet50] [--size 128] [--scans 64] [--batch 32] [--repeats 3]

Prints one JSON object. The model is a timm classifier with RANDOM weights (nothing is downloaded)
and the scans are generated head-like images: timing does not depend on what the weights are.
Measured in the same run:

* ``baseline``: pytorch-grad-cam used the plain way (``GradCAM(model, [layer4])`` on a model whose
  weights require gradients, fp32): what a notebook does;
* ``sslmri``: :func:`sslmri_core.explain.cam.compute_cams` (weights frozen, the gradient starts at the
  target layer, so backward never runs through the encoder), fp32 and bf16 autocast, channels-last;
* ``single``: :func:`sslmri_core.explain.cam.explain_image` on one scan, model already loaded;
* ``stats``: the ``gradcam`` command's per-scan statistics on top (masks, top-k vs random removal,
  ROADCombined at percentile 80, the default), for what a full ``gradcam`` run costs per scan.

Medians over ``--repeats`` runs; ratios are baseline / sslmri (higher is better).
Targets (2 CPU cores, ResNet-50 at 128 px): <= 60 ms/scan batched, <= 150 ms for one scan.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch


def scans(n: int, size: int, seed: int = 0) -> np.ndarray:
    """uint8 ``(n, size, size)``: an ellipse 'head' with noise and a bright blob."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    out = np.empty((n, size, size), np.uint8)
    for i in range(n):
        head = ((yy - 0.5) / 0.42) ** 2 + ((xx - 0.5) / 0.36) ** 2 <= 1
        img = head * 100.0 + rng.normal(0, 15, (size, size))
        cy, cx = rng.uniform(0.3, 0.7, 2)
        img[((yy - cy) ** 2 + (xx - cx) ** 2) <= 0.06**2] = 230
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _native_bf16(device: torch.device) -> bool:
    """Whether bf16 is worth trying: a GPU with bf16, or a CPU with AVX512-BF16 / AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--scans", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stats-scans", type=int, default=32, help="Scans for the statistics timing (0: skip).")
    args = parser.parse_args()

    from pytorch_grad_cam import GradCAM

    from sslmri_core.explain.cam_stats import brain_mask, map_stats
    from sslmri_core.explain.cam import LoadedModel, compute_cams, explain_image, resolve_target_layer, to_input
    from sslmri_core.explain.faithfulness import deletion_drops, road_scores
    from sslmri_core.train.models import Classifier, create_encoder
    from sslmri_core.train.runtime import device_name, pick_device

    torch.manual_seed(0)
    device = pick_device()
    images = scans(args.scans, args.size)
    layer = "encoder.layer4"

    # Baseline: the library as documented, on a plain trainable model in fp32.
    plain = Classifier(create_encoder(args.model), 4).to(device).eval()
    x_plain = to_input(images, device).contiguous()

    def baseline() -> None:
        for b in range(0, len(images), args.batch):
            with GradCAM(model=plain, target_layers=[plain.get_submodule(layer)]) as cam:
                cam(input_tensor=x_plain[b : b + args.batch], targets=None)

    base_s = timed(baseline, args.repeats)

    model = Classifier(create_encoder(args.model), 4).to(device).eval().to(memory_format=torch.channels_last)
    model.load_state_dict(plain.state_dict())
    x = to_input(images, device)
    results: dict[str, dict[str, float]] = {}
    precisions = ["fp32"] + (["bf16"] if _native_bf16(device) else [])
    for precision in precisions:
        def batched(p: str = precision) -> None:
            for b in range(0, len(images), args.batch):
                compute_cams(model, layer, x[b : b + args.batch], method="gradcam", precision=p)

        loaded = LoadedModel(model, ["a", "b", "c", "d"], args.size, resolve_target_layer(model, None), None,
                             precision, str(device))
        raw = np.asarray(images[0], dtype=np.float32) * 3.7  # a float scan, as an upload might be
        single_s = timed(lambda: explain_image(loaded, raw), max(5, args.repeats))
        batch_s = timed(batched, args.repeats)
        results[precision] = {"batched_ms_per_scan": 1000 * batch_s / len(images), "single_ms": 1000 * single_s}

    stats: dict[str, float] = {}
    if args.stats_scans:
        n = min(args.stats_scans, len(images))
        xs, ims = x[:n], images[:n]
        cb = compute_cams(model, layer, xs, method="gradcam", precision="fp32")
        conf = cb.probs[np.arange(n), cb.targets]
        rng = np.random.default_rng(0)
        stats["masks_and_map_stats_ms_per_scan"] = 1000 * timed(
            lambda: [map_stats(cb.cams[i], threshold=0.5, brain=brain_mask(ims[i]), lesion=None) for i in range(n)],
            args.repeats) / n
        stats["deletion_vs_random_ms_per_scan"] = 1000 * timed(
            lambda: deletion_drops(model, xs, cb.cams, cb.targets, conf, topk_pct=20.0, rng=rng), args.repeats) / n
        stats["road_combined_p80_ms_per_scan"] = 1000 * timed(
            lambda: road_scores(model, xs, cb.cams, cb.targets, [80]), 1) / n

    best = min(results, key=lambda p: results[p]["batched_ms_per_scan"])
    print(json.dumps({
        "benchmark": "gradcam",
        "model": args.model, "weights": "random (untrained; timing only)", "image_size": args.size,
        "scans": len(images), "batch": args.batch, "repeats": args.repeats,
        "machine": {"device": device_name(device), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "processor": platform.processor() or platform.machine(), "torch": torch.__version__},
        "baseline_plain_pytorch_grad_cam_ms_per_scan": 1000 * base_s / len(images),
        "sslmri": results,
        "best_precision": best,
        "ratio_baseline_over_sslmri_batched": (1000 * base_s / len(images)) / results[best]["batched_ms_per_scan"],
        "statistics": stats,
        "targets": {"batched_ms_per_scan": 60, "single_ms": 150},
        "meets_targets": results[best]["batched_ms_per_scan"] <= 60 and min(r["single_ms"] for r in results.values()) <= 150,
    }, indent=None))


if __name__ == "__main__":
    main()
