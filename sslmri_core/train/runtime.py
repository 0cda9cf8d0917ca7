"""Device, precision, seeding and random states (checkpoint files: :mod:`sslmri_core.train.checkpoints`)."""

from __future__ import annotations

import contextlib
import functools
import random
import time
from typing import Any

import numpy as np
import torch

from sslmri_core.config import COMPILE_AUTO_MIN_STEPS, COMPILE_MODES, PRECISIONS


def pick_device() -> torch.device:
    """The first CUDA GPU when there is one, else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def use_compile(setting: str, device: torch.device, steps: int) -> bool:
    """Whether to ``torch.compile`` the training model for a run of ``steps`` optimiser steps: ``on``, or
    ``auto`` on a CUDA device when the run is long enough to win the compile time back
    (``COMPILE_AUTO_MIN_STEPS``; on a CPU it rarely is, and compiling needs a C++ toolchain)."""
    if setting not in COMPILE_MODES:
        raise ValueError(f"--compile must be one of {', '.join(COMPILE_MODES)}, got {setting!r}")
    return setting == "on" or (setting == "auto" and device.type == "cuda" and steps >= COMPILE_AUTO_MIN_STEPS)


def place_pool(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Where the uint8 pool ``(N, S, S)`` lives while training: on the GPU when it takes under a quarter of
    its free memory (each batch is then gathered there), else in pinned host memory (batches cross
    asynchronously); on a CPU, as it is."""
    if device.type != "cuda":
        return images
    free, _ = torch.cuda.mem_get_info(device)
    return images.to(device) if images.nbytes < free // 4 else images.pin_memory()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu ({torch.get_num_threads()} threads)"


def _bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:  # oneDNN knows whether this CPU has native bf16 (AVX512-BF16 or AMX)
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@functools.lru_cache(maxsize=1)
def cpu_bf16_speedup() -> float:
    """How much faster a bf16 matrix product is than fp32 on this CPU (best of 5 interleaved tries).

    Having the instructions is not enough: on our 2-core AVX512-BF16 machines (no AMX) bf16
    convolutions and products ran at about half the fp32 rate, so ``auto`` measures (~0.1 s).
    """
    a = torch.randn(512, 512)
    b = a.bfloat16()
    best = {"fp32": float("inf"), "bf16": float("inf")}
    for _ in range(5):
        for name, m in (("fp32", a), ("bf16", b)):
            start = time.perf_counter()
            for _ in range(4):
                m @ m
            best[name] = min(best[name], time.perf_counter() - start)
    return best["fp32"] / best["bf16"]


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 where the hardware has it (on a CPU: only if it is measurably faster than fp32,
    see :func:`cpu_bf16_speedup`), else fp16 on CUDA (with a grad scaler), else fp32.

    fp16 is for GPUs only: CPUs have no fast fp16 path, and bf16 needs no loss scaling.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        if _bf16_supported(device) and (device.type == "cuda" or cpu_bf16_speedup() >= 1.2):
            return "bf16"
        return "fp16" if device.type == "cuda" else "fp32"
    if precision == "bf16" and not _bf16_supported(device):
        raise ValueError(f"--precision bf16: this {device.type.upper()} has no native bf16; use auto or fp32")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("--precision fp16 needs a CUDA GPU; on the CPU use auto, bf16 or fp32")
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """Autocast context for the resolved precision (a no-op for fp32)."""
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device_type=device.type, dtype=dtype)
    return contextlib.nullcontext()


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """Loss scaling for fp16 (small gradients would underflow); disabled, a pass-through, otherwise."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator for data-side randomness."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def rng_state(gen: torch.Generator) -> dict[str, Any]:
    """Every random state a training run draws from, as plain data a ``weights_only`` load accepts."""
    numpy_state = np.random.get_state()
    # A tuple (MT19937's legacy form) unless someone swapped np.random's global generator's bit generator.
    if not isinstance(numpy_state, tuple):
        raise TypeError("np.random's global generator is not MT19937: its state cannot be checkpointed")
    kind, keys, pos, has_gauss, cached = numpy_state
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "data": gen.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], gen: torch.Generator) -> None:
    """Restore what :func:`rng_state` saved (Python, NumPy, torch, CUDA and the data generator)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    gen.set_state(state["data"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
