"""Processes that write to and read from one run store at once (for the concurrency test).

Module-level functions, so ``multiprocessing``'s spawn start method can import them.
"""

from __future__ import annotations

import time
from typing import Any


def writer(url: str, run_id: int, key: str, seconds: float, start: Any, results: Any) -> None:
    """Log one metric point per transaction for ``seconds``; also start runs, log params and heartbeats."""
    from sslmri_core.store.writer import RunStore

    n, runs, errors = 0, 0, []
    try:
        store = RunStore(url)
        start.wait(120)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            store.log_metrics(run_id, {key: float(n)}, step=n)
            n += 1
            if n % 25 == 0:
                store.heartbeat(run_id)
                store.log_params(run_id, {f"{key}_written": n})
                store.end_run(store.start_run("pretrain", {"writer": key}), "finished")
                runs += 1
    except BaseException as exc:  # report, never hang the parent
        errors.append(f"{exc.__class__.__name__}: {exc}")
    results.put({"who": key, "n": n, "runs": runs, "errors": errors})


def reader(url: str, run_id: int, seconds: float, start: Any, results: Any) -> None:
    """Read through the dashboard's read-only queries for ``seconds``."""
    from sslmri_core.store import queries
    from sslmri_core.store.engine import read_engine

    n, errors = 0, []
    try:
        engine = read_engine(url)
        start.wait(120)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            queries.runs_frame(engine)
            queries.metric_series(engine, run_id)
            queries.counts_by_kind_status(engine)
            n += 1
    except BaseException as exc:
        errors.append(f"{exc.__class__.__name__}: {exc}")
    results.put({"who": "reader", "n": n, "errors": errors})
