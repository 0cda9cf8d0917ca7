"""Checkpoint files, and the one road from a run id to its weights.

Writing: :func:`atomic_save` (never a half-written file). Reading: :func:`load_checkpoint`, tensors
and plain data only (``weights_only``). From a run: :func:`checkpoint_of` checks the run's kind,
opens its checkpoint only inside the run's own output folder (:func:`sslmri_core.paths.run_file`)
and loads it; :func:`encoder_state`, :func:`encoder_from` and :func:`classifier_from` turn what it
holds into weights or a model. Every command that loads a run's weights (finetune ``--from-run``,
``pretrain --resume``, evaluate, embed, gradcam, the dashboard) goes through here.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from sslmri_core.config import FinetuneConfig, from_dict
from sslmri_core.errors import RunFailed, UsageError
from sslmri_core.paths import run_file
from sslmri_core.store.status import RunRecord
from sslmri_core.train.models import Classifier, create_encoder

if TYPE_CHECKING:
    from sslmri_core.store.writer import RunStore


class CheckpointError(UsageError):
    """A checkpoint that cannot be trusted or read (a pickle payload, a damaged file, the wrong contents)."""


# A write that fails for want of room (or of a writable disk): the run stops with one line.
DISK_FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
             errno.EROFS: "read-only file system"}


def atomic_save(obj: dict[str, Any], path: Path) -> None:
    """Write a checkpoint so that a crash never leaves a half-written file at ``path``.

    It goes to a temporary file beside ``path`` (through a Python file, so a full disk is an
    ``OSError``, not torch's opaque error), synced, then renamed over ``path``: the previous
    checkpoint survives any failure and the temporary file is removed. A full or read-only disk is
    a one-line :class:`RunFailed` naming the checkpoint that is kept (:func:`disk_full`).
    """
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        if exc.errno in DISK_FULL:
            raise disk_full(exc, obj, path) from None
        raise
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):  # a read-only disk may refuse even this
                os.unlink(tmp)


def disk_full(exc: OSError, obj: dict[str, Any], path: Path) -> RunFailed:
    """The one line for a checkpoint ``path`` that could not be written for want of room (``exc``)."""
    line = f"{DISK_FULL[exc.errno or 0]} writing {path}; "
    if not path.is_file():
        return RunFailed(line + "no complete checkpoint was written yet (run it again when there is space)")
    line += f"the last complete checkpoint is kept at {path}"
    if obj.get("kind") == "pretrain" and isinstance(obj.get("run_id"), int):
        line += f" (resume with --resume {obj['run_id']} when there is space)"
    return RunFailed(line)


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


# -- a run's checkpoint -------------------------------------------------------------------------
@dataclass(frozen=True)
class RunCheckpoint:
    """A run (its record), its checkpoint file and what the file holds."""

    record: RunRecord
    path: Path
    state: dict[str, Any]


def checkpoint_path(record: RunRecord, option: str) -> Path:
    """The checkpoint file ``record`` names, only inside the run's own output folder.

    ``option`` (``--run``, ``--from-run``, ``--resume``) names the run in the one-line errors.
    """
    if not record.checkpoint_path:
        raise UsageError(f"{option} {record.id} has no checkpoint (run status: {record.status})")
    # The path comes from the store: open it only inside that run's own output folder.
    path = run_file(record.checkpoint_path, record.out_dir, f"{option} {record.id} checkpoint")
    if not path.is_file():
        raise UsageError(f"{option} {record.id} has no checkpoint file (run status: {record.status}): {path} is gone")
    return path


def own_checkpoint(path: Path, kind: str, run_id: int, option: str) -> dict[str, Any]:
    """Load ``path`` and check that it says it is run ``run_id``'s ``kind`` checkpoint (what resuming needs)."""
    state = load_checkpoint(path)
    if state.get("kind") != kind or state.get("run_id") != run_id:
        raise CheckpointError(f"{option} {run_id}: {path} is not this run's checkpoint")
    return state


def checkpoint_of(
    store: RunStore, run_id: int, option: str = "--run", *, kinds: tuple[str, ...] = ("finetune",),
    use: str = "", finished: bool = False,
) -> RunCheckpoint:
    """Run ``run_id``'s checkpoint, checked: the run exists, is of one of ``kinds`` (else ``use`` says
    what the command takes), has ``finished`` when asked, and its file lies in its own folder."""
    record = store.get_run_for(option, run_id)
    if record.kind not in kinds:
        raise UsageError(f"{option} {run_id} is a {record.kind} run; {use}")
    if finished and record.status != "finished":
        raise UsageError(f"{option} {run_id} is {record.status} and has no final checkpoint; {use}")
    path = checkpoint_path(record, option)
    return RunCheckpoint(record, path, load_checkpoint(path))


# -- what a checkpoint holds --------------------------------------------------------------------
def encoder_state(found: RunCheckpoint, option: str = "--run") -> dict[str, torch.Tensor]:
    """The encoder weights of a pretraining (``encoder``) or fine-tuning (``model``'s ``encoder.*``) checkpoint."""
    state = found.state
    if isinstance(state.get("encoder"), dict):
        return dict(state["encoder"])
    model = state.get("model")
    if isinstance(model, dict):
        encoder = {k.removeprefix("encoder."): v for k, v in model.items() if k.startswith("encoder.")}
        if encoder:
            return encoder
    raise CheckpointError(f"{option} {found.record.id}: {found.path} holds no encoder weights")


def state_mismatches(own: dict[str, Any], state: dict[str, Any]) -> tuple[list[str], list[str], list[str]]:
    """Keys of a model's ``own`` state missing from ``state``, keys of ``state`` the model lacks, and
    keys in both whose tensor shapes differ."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k, v in own.items()
             if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(v.shape)]
    return missing, unexpected, wrong


def load_weights(module: nn.Module, state: dict[str, Any], what: str, model: str) -> None:
    """Load ``state`` into ``module`` (strictly), or a one-line :class:`CheckpointError`: ``what`` (the weights,
    e.g. ``--from-run 3: its encoder``) does not fit ``model`` (``--model resnet18``), naming the first key off."""
    own = module.state_dict()
    missing, unexpected, wrong = state_mismatches(own, state)
    off = [f"{k} is not in the checkpoint" for k in missing]
    off += [f"{k} is not in the model" for k in unexpected]
    off += [f"{k} is {tuple(state[k].shape)} in the checkpoint, {tuple(own[k].shape)} in the model" for k in wrong]
    if not off:
        try:
            module.load_state_dict(state, strict=True)
            return
        except RuntimeError as exc:  # anything else torch refuses: its first line
            off = [" ".join(str(exc).split())[:200]]
    raise CheckpointError(f"{what} weights do not fit {model} ({len(off)} mismatched key(s); first: {off[0]})")


def encoder_from(found: RunCheckpoint, model_name: str, option: str = "--run") -> nn.Module:
    """A ``model_name`` encoder ``(B, 1, S, S) -> (B, D)`` (CPU, train mode) with the checkpoint's weights."""
    encoder = create_encoder(model_name)
    load_weights(encoder, encoder_state(found, option), f"{option} {found.record.id}: its encoder", model_name)
    return encoder


@dataclass
class FineTuned:
    """The classifier of a fine-tuning checkpoint, its run config and its class names (in logit order)."""

    model: Classifier
    cfg: FinetuneConfig
    classes: list[str]


def classifier_from(state: dict[str, Any], what: str, config: dict[str, Any] | None = None) -> FineTuned:
    """Rebuild the classifier ``(B, 1, S, S) -> (B, K)`` logits (CPU, train mode) a fine-tuning checkpoint holds.

    The config inside the checkpoint says which encoder (``config``: the run's stored one, for a
    checkpoint without it); ``what`` names the checkpoint in errors.
    """
    if not isinstance(state.get("model"), dict) or not isinstance(state.get("classes"), list) or not state["classes"]:
        raise CheckpointError(f"{what}: the checkpoint holds no classifier (not a fine-tuning checkpoint)")
    cfg = from_dict(FinetuneConfig, state.get("config") or config or {})
    classes = [str(c) for c in state["classes"]]
    model = Classifier(create_encoder(cfg.model), len(classes))
    load_weights(model, state["model"], f"{what}: its classifier", f"{cfg.model} with {len(classes)} classes")
    return FineTuned(model, cfg, classes)
