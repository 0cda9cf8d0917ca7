"""Device, precision, seeding, random states and safe checkpoint files."""

from __future__ import annotations

import contextlib
import functools
import os
import pickle
import random
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def pick_device() -> torch.device:
    """The first CUDA GPU when there is one, else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


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
    kind, keys, pos, has_gauss, cached = np.random.get_state()
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


def atomic_save(obj: dict[str, Any], path: Path) -> None:
    """Write a checkpoint so that a crash never leaves a half-written file at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted or read (a pickle payload, a damaged file)."""


class UnsafePathError(ValueError):
    """A path read from the run store that points outside the folders it may be opened from."""


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``: tensors and plain data, never arbitrary pickles.

    A file that carries anything else (e.g. a pickled object whose ``__reduce__`` would run code)
    is refused with a one-line :class:`CheckpointError`; nothing in it is executed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f" (it references {found.group(1)})" if found else ""
        raise CheckpointError(
            f"refusing to load checkpoint {path}: it holds Python objects, not just tensors and plain data{what}; "
            "it may run code when unpickled, so only weights_only loading is allowed"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first = " ".join(str(exc).split()).split(". ")[0]
        raise CheckpointError(f"cannot read checkpoint {path} (damaged or not a checkpoint): {first}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"cannot use checkpoint {path}: it holds a {type(obj).__name__}, not a checkpoint dict")
    return obj


DATA_ROOTS_ENV = "SSLMRI_DATA_ROOTS"


def data_roots() -> list[Path]:
    """Folders configured as data roots (``$SSLMRI_DATA_ROOTS``, separated by ``os.pathsep``)."""
    raw = os.environ.get(DATA_ROOTS_ENV, "")
    return [Path(p).expanduser() for p in raw.split(os.pathsep) if p.strip()]


def inside_roots(path: str | Path, roots: list[str | Path], what: str = "file") -> Path:
    """``path`` resolved (symbolic links and ``..`` followed), if it lies under one of ``roots``; else an error.

    Paths read from the run store are opened only through this, so a store row (edited, or from
    another machine) cannot make sslmri read or unpickle a file elsewhere on disk.
    """
    resolved = Path(path).expanduser().resolve()
    for root in roots:
        if root and resolved.is_relative_to(Path(root).expanduser().resolve()):
            return resolved
    shown = ", ".join(str(r) for r in roots if r) or "none"
    raise UnsafePathError(f"refusing to open {what} {path}: it is outside the allowed folders ({shown})")


def run_file(path: str | Path, out_dir: str | None, what: str = "file") -> Path:
    """A file named by a run's store row (its checkpoint): only under the run's own output folder."""
    if not out_dir:
        raise UnsafePathError(f"refusing to open {what} {path}: the run has no output folder recorded")
    return inside_roots(path, [out_dir], what)


def scan_file(path: str | Path, run_data: str | list[str] | None) -> Path:
    """A scan named by a store row (a prediction's ``scan``): only under the run's data folder(s) or ``$SSLMRI_DATA_ROOTS``."""
    roots: list[str | Path] = [run_data] if isinstance(run_data, str) else list(run_data or [])
    return inside_roots(path, [*roots, *data_roots()], "scan")
