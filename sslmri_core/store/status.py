"""How a stored run reads: heartbeat and staleness rules, :class:`RunRecord`, leakage reasons.

A running command refreshes its run's ``heartbeat_at`` (a thread of
:func:`sslmri_core.store.lifecycle.open_run`); a ``running`` run whose last sign of life is older
than :func:`heartbeat_timeout_s` *reads* as ``interrupted`` everywhere (the process was killed or
crashed). Pure rules: no database access here.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sslmri_core.errors import UsageError

# Heartbeats: a running command refreshes ``runs.heartbeat_at`` every interval; a ``running`` run
# silent for longer than the timeout reads as ``interrupted``. Both can be set by environment
# variable (tests use short ones); these are the only defaults.
HEARTBEAT_INTERVAL_ENV = "SSLMRI_HEARTBEAT_INTERVAL"
HEARTBEAT_TIMEOUT_ENV = "SSLMRI_HEARTBEAT_TIMEOUT"
DEFAULT_HEARTBEAT_INTERVAL_S = 15.0
DEFAULT_HEARTBEAT_TIMEOUT_S = 300.0
MAX_ENV_SECONDS = 1e9  # about 31 years: longer ones overflow datetime arithmetic
STALE_ERROR = "no heartbeat since {last}: the process is gone (killed or crashed)"


def utc_now() -> datetime:
    """The current time, timezone-aware UTC (what the store writes)."""
    return datetime.now(timezone.utc)


def as_utc(value: datetime | None) -> datetime | None:
    """``value`` marked UTC when naive (SQLite hands back naive datetimes; the store always writes UTC)."""
    return value.replace(tzinfo=timezone.utc) if value is not None and value.tzinfo is None else value


def _env_seconds(name: str, default: float) -> float:
    """Seconds from environment variable ``name`` (unset or blank: ``default``).

    Anything but a finite number > 0 (and at most :data:`MAX_ENV_SECONDS`, beyond which date
    arithmetic overflows) is a :class:`~sslmri_core.errors.UsageError` naming the variable.
    """
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= MAX_ENV_SECONDS):
        raise UsageError(f"${name} must be a number of seconds, finite and > 0 (at most {MAX_ENV_SECONDS:g}), "
                         f"got {raw[:40]!r}")
    return value


def heartbeat_interval_s() -> float:
    """Seconds between two heartbeat writes of a training run (``$SSLMRI_HEARTBEAT_INTERVAL``, default 15)."""
    return _env_seconds(HEARTBEAT_INTERVAL_ENV, DEFAULT_HEARTBEAT_INTERVAL_S)


def heartbeat_timeout_s() -> float:
    """Silence after which a ``running`` run reads as ``interrupted`` (``$SSLMRI_HEARTBEAT_TIMEOUT``, default 300)."""
    return _env_seconds(HEARTBEAT_TIMEOUT_ENV, DEFAULT_HEARTBEAT_TIMEOUT_S)


def check_environment() -> None:
    """Read every heartbeat setting once: a bad value stops a command or a dashboard page before anything runs."""
    heartbeat_interval_s()
    heartbeat_timeout_s()


def stale_cutoff(now: datetime | None = None) -> datetime:
    """Runs whose last sign of life is before this moment are no longer running."""
    return (now or utc_now()) - timedelta(seconds=heartbeat_timeout_s())


@dataclass(frozen=True)
class RunRecord:
    """A run as readers see it (no ORM object leaves the store)."""

    id: int
    kind: str
    status: str
    parent_run_id: int | None
    task: str | None
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    config: dict[str, Any]
    git_sha: str | None
    host: str | None
    device: str | None
    out_dir: str | None
    checkpoint_path: str | None
    error: str | None
    heartbeat_at: datetime | None = None


def record_from(values: Any, cutoff: datetime | None = None) -> RunRecord:
    """A :class:`RunRecord` from an ORM run or a row mapping, with the status readers should see."""
    get = values.__getitem__ if hasattr(values, "keys") else lambda name: getattr(values, name)
    fields = {name: get(name) for name in RunRecord.__dataclass_fields__}
    for name in ("created_at", "started_at", "ended_at", "heartbeat_at"):
        fields[name] = as_utc(fields[name])
    last = fields["heartbeat_at"] or fields["started_at"] or fields["created_at"]
    if fields["status"] == "running" and last is not None and last < (cutoff or stale_cutoff()):
        fields["status"] = "interrupted"
        fields["error"] = fields["error"] or STALE_ERROR.format(last=last.isoformat(timespec="seconds"))
    return RunRecord(**fields)


def leakage_reasons(params: dict[str, str | None]) -> list[str]:
    """Why a run's results may be inflated by leakage, from its text params (empty: none known).

    Runs write ``leakage_reasons`` (a JSON list); runs from before it are judged by the old params
    (an image-level split, or test images in the SSL pool)."""
    raw = params.get("leakage_reasons")
    if raw:
        try:
            reasons = json.loads(raw)
        except ValueError:
            reasons = [raw]
        return [str(r) for r in reasons] if isinstance(reasons, list) else [str(reasons)]
    out = []
    if params.get("split_level") == "image":
        out.append("image-level split: no subject ids, slices of one patient may sit on two sides")
    try:
        overlap = float(params.get("ssl_pool_test_overlap") or 0)
    except ValueError:
        overlap = 0.0
    if overlap > 0:
        out.append(f"{overlap:g} test image(s) were in the SSL pretraining pool")
    return out
