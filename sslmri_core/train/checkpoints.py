"""Checkpoint files, and the one road from a run id to its weights.

Writing: :func:`atomic_save` (never a half-written file). Reading: :func:`load_checkpoint`, tensors
and plain data only (``weights_only``). From a run: :func:`checkpoint_of` checks the run's kind,
opens its checkpoint only inside the run's own output folder (:func:`sslmri_core.paths.run_file`)
and loads it; :func:`encoder_state`, :func:`encoder_from` and :func:`classifier_from` turn what it
holds into weights or a model. Every command that loads a run's weights (finetune ``--from-run``,
``pretrain --resume``, evaluate, embed, gradcam, the dashboard) goes through here.
"""

from __future__ import annotations

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
from sslmri_core.errors import UsageError
from sslmri_core.paths import run_file
from sslmri_core.store.status import RunRecord
from sslmri_core.train.models import Classifier, create_encoder

if TYPE_CHECKING:
    from sslmri_core.store.writer import RunStore


class CheckpointError(UsageError):
    """A checkpoint that cannot be trusted or read (a pickle payload, a damaged file, the wrong contents)."""


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


def encoder_from(found: RunCheckpoint, model_name: str, option: str = "--run") -> nn.Module:
    """A ``model_name`` encoder ``(B, 1, S, S) -> (B, D)`` (CPU, train mode) with the checkpoint's weights."""
    encoder = create_encoder(model_name)
    encoder.load_state_dict(encoder_state(found, option))
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
    model.load_state_dict(state["model"])
    return FineTuned(model, cfg, classes)
