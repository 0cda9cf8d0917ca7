"""A run's whole lifecycle in one context manager: :func:`open_run`.

Every command that records a run (pretrain, finetune, evaluate, gradcam, experiment, leakage) goes
through it, so the rules hold everywhere: the run is ``running`` only inside the ``with`` block;
anything that fails after the run row exists (making its folder, a manifest insert, a console
that cannot print a name) marks it ``failed`` or ``interrupted`` instead of leaving it ``running``;
a background thread beats the run's heartbeat for as long as the block runs, however long one
step or one evaluation takes; the run records this process (host and pid), so a ``kill -9`` on this
host reads as ``interrupted`` at once; and an output root (``--out``) that cannot be written is a
one-line :class:`~sslmri_core.errors.UsageError` before anything is recorded.
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sslmri_core.errors import UsageError
from sslmri_core.store.status import heartbeat_interval_s, owner


class LifecycleStore(Protocol):
    """What :func:`open_run` needs of a store (a :class:`RunStore`, or a rank's read-only stand-in)."""

    def start_run(
        self, kind: str, config: dict[str, Any], *, task: str | None = ..., parent_run_id: int | None = ...,
        device: str | None = ...,
    ) -> int: ...
    def reopen_run(self, run_id: int) -> bool: ...
    def update_run(self, run_id: int, **fields: Any) -> None: ...
    def heartbeat(self, run_id: int) -> None: ...
    def track(self, run_id: int) -> AbstractContextManager[Any]: ...


@dataclass(frozen=True)
class OpenRun:
    """A run in progress: its id and its output folder (``None`` for runs that write no files)."""

    run_id: int
    out_dir: Path | None

    @property
    def folder(self) -> Path:
        """The output folder of a run opened with ``out`` or ``out_dir`` (an error for one without)."""
        if self.out_dir is None:
            raise RuntimeError(f"run {self.run_id} was opened without an output folder")
        return self.out_dir


@contextmanager
def keep_alive(store: LifecycleStore, run_id: int) -> Iterator[None]:
    """Beat ``run_id``'s heartbeat from a daemon thread every heartbeat interval until the block ends."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(heartbeat_interval_s()):
            # A missed beat is harmless: the next one retries, and the timeout is 20 intervals.
            with contextlib.suppress(Exception):
                store.heartbeat(run_id)

    thread = threading.Thread(target=beat, name=f"run-{run_id}-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def writable_root(out: str | Path) -> Path:
    """The output root ``out`` (``--out``), resolved, made if missing and checked by writing a temporary
    file there; a :class:`UsageError` naming ``--out`` and the reason when it cannot be written."""
    try:
        root = Path(out).resolve()
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".sslmri-probe-"):
            pass
    except FileExistsError:
        raise UsageError(f"--out {out}: not a folder (a file is there)") from None
    except (OSError, ValueError) as exc:  # ValueError: e.g. a NUL byte in the path
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UsageError(f"--out {out}: cannot write there ({reason})") from None
    return root


@contextmanager
def open_run(
    store: LifecycleStore,
    kind: str,
    config: dict[str, Any],
    *,
    out: str | Path | None = None,
    out_dir: str | Path | None = None,
    resume: int | None = None,
    run_id: int | None = None,
    **fields: Any,
) -> Iterator[OpenRun]:
    """Start a run (or ``resume`` one) and own it until the block ends.

    ``out``: the output root; the run's folder is ``<out>/run-<id>`` (resolved and recorded; the
    first file written there makes it). A run this call starts first checks that ``out`` can be
    written (:func:`writable_root`), so a bad ``--out`` records nothing.
    ``out_dir``: an existing run folder (a resumed run keeps its own). ``run_id``: a run another
    process already started (the rank-0 id under ``torchrun``); it is tracked but not started again,
    and this process is recorded as its owner (a no-op through torchrun's follower stores).
    ``fields`` go to :meth:`RunStore.start_run` (``task``, ``parent_run_id``, ``device``).
    On exit the run is ``finished``; an exception marks it ``failed`` (``interrupted`` for Ctrl-C)
    and propagates.
    """
    root = writable_root(out) if out and resume is None and run_id is None else None
    adopted = resume is None and run_id is not None
    if resume is not None:
        if not store.reopen_run(resume):
            raise UsageError(f"--resume {resume}: another process has just resumed or is running it")
        run_id = resume
    elif run_id is None:
        run_id = store.start_run(kind, config, **fields)
    with store.track(run_id):
        if adopted:  # e.g. a finished experiment taken up again by this process
            store.update_run(run_id, **owner())
        root = root or (Path(out).resolve() if out else None)
        folder = Path(out_dir) if out_dir is not None else root / f"run-{run_id}" if root else None
        if folder is not None and out_dir is None:
            store.update_run(run_id, out_dir=str(folder))
        with keep_alive(store, run_id):
            yield OpenRun(run_id, folder)
