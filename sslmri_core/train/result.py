"""What a training command (pretrain, finetune) hands back."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainResult:
    """What a training command reports: the run, its checkpoint and its final metrics."""

    run_id: int
    kind: str
    status: str
    checkpoint: str | None
    metrics: dict[str, float]
    out_dir: str
