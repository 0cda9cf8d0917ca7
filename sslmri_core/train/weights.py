"""Loading a local timm weights file (e.g. ImageNet) into a one-channel encoder; nothing is downloaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from sslmri_core.errors import UsageError
from sslmri_core.train.checkpoints import CheckpointError, load_checkpoint, state_mismatches


class WeightsError(UsageError):
    """A ``--weights`` file that is missing, unreadable or does not fit the model."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a timm-style weights file: safetensors, or a torch file holding a state dict
    (optionally under ``state_dict`` / ``model``, with DataParallel's ``module.`` prefix)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"--weights: no such file {path} (nothing is downloaded: give a local timm weights file)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = load_checkpoint(path)  # weights_only: never unpickles code
    except CheckpointError as exc:
        raise WeightsError(f"--weights: {exc}") from None
    except Exception as exc:  # a damaged safetensors file
        detail = " ".join(str(exc).split())
        raise WeightsError(f"--weights: cannot read {path}: {exc.__class__.__name__}: {detail}") from None
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    tensors = {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightsError(f"--weights: {path} holds no tensors")
    return tensors


def load_into_encoder(encoder: nn.Module, path: str | Path) -> dict[str, int]:
    """Load ``path`` into a timm ``encoder`` built with ``in_chans=1, num_classes=0``.

    The first convolution's RGB filters are summed into one channel (timm's ``adapt_input_conv``,
    what ``timm.create_model(pretrained=True, in_chans=1)`` does); the classifier is dropped. Every
    other encoder weight must be in the file with the right shape. Returns counts for the record.
    """
    from timm.models import adapt_input_conv

    state = read_state_dict(path)
    cfg = getattr(encoder, "pretrained_cfg", {}) or {}
    first = cfg.get("first_conv")
    for name in [first] if isinstance(first, str) else list(first or []):
        key = f"{name}.weight"
        if key in state and state[key].ndim == 4 and state[key].shape[1] != 1:
            state[key] = adapt_input_conv(1, state[key].float())
    own = encoder.state_dict()
    classifier = cfg.get("classifier")
    heads = [classifier] if isinstance(classifier, str) else list(classifier or [])
    dropped = [k for k in state if k not in own and any(k.startswith(f"{h}.") for h in heads)]
    for k in dropped:
        del state[k]
    missing, unexpected, wrong = state_mismatches(own, state)
    if missing or unexpected or wrong:
        detail = "; ".join(f"{what}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                           for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
                           if keys)
        raise WeightsError(f"--weights: {path} does not fit this --model ({detail})")
    encoder.load_state_dict(state)
    return {"weights_tensors": len(state), "weights_dropped_head": len(dropped)}
