"""Encoders (any timm model, one input channel), the SimCLR projection head and the classifier."""

from __future__ import annotations

import torch
from torch import nn

from sslmri_core.errors import UsageError


class ModelError(UsageError):
    """A model name timm does not know, or a checkpoint that does not fit."""


def check_model_name(name: str) -> None:
    """Fail fast, before any data is read, on a name timm does not know."""
    import timm

    if not timm.is_model(name):
        close = timm.list_models(f"*{name}*")[:5]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise ModelError(f"--model: unknown model name {name!r}{hint}; any timm model name works, e.g. resnet50")


def create_encoder(name: str) -> nn.Module:
    """A timm model with one input channel and no classifier: ``(B, 1, H, W) -> (B, num_features)``.

    Weights are random: nothing is ever downloaded at run time.
    """
    import timm

    check_model_name(name)
    return timm.create_model(name, pretrained=False, in_chans=1, num_classes=0)


def feature_dim(encoder: nn.Module) -> int:
    """``D``, the width of an encoder's features ``(B, D)`` (timm's ``num_features``)."""
    # torch's stubs type every module attribute as Tensor | Module; timm sets this one as a plain int.
    dim = getattr(encoder, "num_features", None)
    if not isinstance(dim, int):
        raise ModelError(f"{type(encoder).__name__} has no num_features: not a timm encoder")
    return dim


class ProjectionHead(nn.Module):
    """SimCLR MLP head: Linear -> BN -> ReLU -> Linear, ``(B, in_dim) -> (B, out_dim)``."""

    def __init__(self, in_dim: int, hidden_dim: int = 512, out_dim: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SimCLRModel(nn.Module):
    """Encoder + projection head: ``(B, 1, H, W) -> (B, out_dim)``."""

    def __init__(self, encoder: nn.Module, hidden_dim: int = 512, out_dim: int = 128) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = ProjectionHead(feature_dim(encoder), hidden_dim, out_dim)

    def forward(
        self, x: torch.Tensor, return_features: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Projections ``(B, out_dim)``; with ``return_features`` also the encoder features ``(B, num_features)``
        (what fine-tuning and the online probe use); one call, so DistributedDataParallel sees one forward."""
        h = self.encoder(x)
        z = self.head(h)
        return (h, z) if return_features else z


class Classifier(nn.Module):
    """Encoder + linear classifier: ``(B, 1, H, W) -> (B, n_classes)`` logits."""

    def __init__(self, encoder: nn.Module, n_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.fc = nn.Linear(feature_dim(encoder), n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.encoder(x))
