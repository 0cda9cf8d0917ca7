"""How a stored run reads: heartbeat and staleness rules, :class:`RunRecord`, leakage reasons.

A running command refreshes its run's ``heartbeat_at`` (a thread of
:func:`sslmri_core.store.lifecycle.open_run`); a ``running`` run whose last sign of life is older
than :func:`heartbeat_timeout_s` *reads* as ``interrupted`` everywhere (the process was killed or
crashed). A run also records its owner's ``host`` and ``pid``: on that same host, a ``running`` run
whose process is gone (``kill -9``) reads as ``interrupted`` at once in Python (:func:`record_from`);
on other hosts, and in SQL (:func:`sslmri_core.store.schema.effective_status`), the heartbeat rule
alone decides. Pure rules: no database access here.
"""

from __future__ import annotations

import json
import math
import os
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
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
GONE_ERROR = "process {pid} on {host} is gone (killed or crashed)"


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


def this_host() -> str:
    """This machine's host name (what a run records in ``runs.host``)."""
    return socket.gethostname()


def owner() -> dict[str, Any]:
    """The ``host`` and ``pid`` columns of a run this process owns (rank 0's under ``torchrun``)."""
    return {"host": this_host(), "pid": os.getpid()}


def _zombie(pid: int) -> bool:
    """Whether ``pid`` is a dead process its parent has not reaped yet (Linux ``/proc``; False elsewhere)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` lives on this machine; when unsure (no permission, Windows) it does."""
    if pid <= 0 or os.name == "nt":  # os.kill(pid, 0) would signal a group, or terminate it on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # PermissionError: someone else's process, alive
        return True
    return not _zombie(pid)


def process_gone(host: str | None, pid: int | None) -> bool:
    """True when a run's owner ran on this host and its process no longer exists."""
    return pid is not None and host == this_host() and not pid_alive(pid)


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
    pid: int | None = None


def record_from(values: Any, cutoff: datetime | None = None) -> RunRecord:
    """A :class:`RunRecord` from an ORM run or a row mapping, with the status readers should see.

    A ``running`` run reads ``interrupted`` when its process on this host is gone (at once) or when
    it has been silent past the heartbeat timeout (any host)."""
    get = values.__getitem__ if hasattr(values, "keys") else lambda name: getattr(values, name)
    fields = {name: get(name) for name in RunRecord.__dataclass_fields__}
    for name in ("created_at", "started_at", "ended_at", "heartbeat_at"):
        fields[name] = as_utc(fields[name])
    gone = _gone_reason(fields, cutoff) if fields["status"] == "running" else None
    if gone is not None:
        fields["status"], fields["error"] = "interrupted", fields["error"] or gone
    return RunRecord(**fields)


def _gone_reason(fields: dict[str, Any], cutoff: datetime | None) -> str | None:
    """Why a ``running`` run's process is gone: dead on this host, or silent past ``cutoff`` (None: alive)."""
    if process_gone(fields["host"], fields["pid"]):
        return GONE_ERROR.format(pid=fields["pid"], host=fields["host"])
    last = fields["heartbeat_at"] or fields["started_at"] or fields["created_at"]
    if last is not None and last < (cutoff or stale_cutoff()):
        return STALE_ERROR.format(last=last.isoformat(timespec="seconds"))
    return None


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
