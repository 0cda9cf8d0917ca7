"""Which folders a file named by the run store may be opened from (torch-free).

Paths read from the store (a prediction's scan, a checkpoint, a heat map) are opened only through
these functions, so a store row (edited, or written on another machine) cannot make sslmri read a
file elsewhere on disk.

Commands (the CLI) open a run's files only inside that run's own recorded folder. The dashboard
trusts the operator, not the store: a scan must lie inside ``$SSLMRI_DATA_ROOTS`` and a heat map or
checkpoint inside ``$SSLMRI_RUNS_ROOTS``; folders recorded in the store can only narrow that. Roots
must be absolute; the file system root and the home folder are refused unless
``SSLMRI_ALLOW_BROAD_ROOTS=1``. Paths are resolved (``..`` and symbolic links followed) before the
check, the same rule the data loader applies to links inside a data folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from sslmri_core.errors import UsageError

DATA_ROOTS_ENV = "SSLMRI_DATA_ROOTS"
RUNS_ROOTS_ENV = "SSLMRI_RUNS_ROOTS"
ALLOW_BROAD_ENV = "SSLMRI_ALLOW_BROAD_ROOTS"
# One message for every refusal: it must not tell whether the file exists.
REFUSED = "refusing to open this {what}: it is not inside a folder the dashboard may read ({env})"


class UnsafePathError(UsageError):
    """A path read from the run store that points outside the folders it may be opened from."""


def _operator_roots(env: str, default: list[Path]) -> list[Path]:
    """The absolute, resolved roots in ``$env`` (``os.pathsep``-separated), else ``default``."""
    raw = os.environ.get(env, "")
    roots = [Path(p).expanduser() for p in raw.split(os.pathsep) if p.strip()] or default
    broad = os.environ.get(ALLOW_BROAD_ENV, "") == "1"
    home = Path.home().resolve()
    resolved = []
    for root in roots:
        if not root.is_absolute():
            raise UsageError(f"${env}: {root} is not an absolute path (a relative root would depend on the "
                             "folder the dashboard was started in)")
        real = root.resolve()
        if not broad and (real == Path(real.anchor) or real == home):
            raise UsageError(f"${env}: {real} is the file system root or a home folder, which would expose every "
                             f"file in it; name the data folders, or set {ALLOW_BROAD_ENV}=1")
        resolved.append(real)
    return resolved


def data_roots() -> list[Path]:
    """Folders the dashboard may show scans from: ``$SSLMRI_DATA_ROOTS``, else the built-in data's cache."""
    from sslmri_core.data.builtin import cache_dir

    return _operator_roots(DATA_ROOTS_ENV, [cache_dir().resolve()])


def runs_roots() -> list[Path]:
    """Folders the dashboard may read heat maps and checkpoints from: ``$SSLMRI_RUNS_ROOTS``, else ``./runs``."""
    return _operator_roots(RUNS_ROOTS_ENV, [(Path.cwd() / "runs").resolve()])


def _under(resolved: Path, roots: list[str | Path]) -> bool:
    return any(root and resolved.is_relative_to(Path(root).expanduser().resolve()) for root in roots)


def inside_roots(path: str | Path, roots: list[str | Path], what: str = "file") -> Path:
    """``path`` resolved (symbolic links and ``..`` followed), if it lies under one of ``roots``; else an error."""
    resolved = Path(path).expanduser().resolve()
    if _under(resolved, roots):
        return resolved
    shown = ", ".join(str(r) for r in roots if r) or "none"
    raise UnsafePathError(f"refusing to open {what} {path}: it is outside the allowed folders ({shown})")


def run_file(path: str | Path, out_dir: str | None, what: str = "file") -> Path:
    """A file named by a run's store row (its checkpoint): only under the run's own output folder."""
    if not out_dir:
        raise UnsafePathError(f"refusing to open {what} {path}: the run has no output folder recorded")
    return inside_roots(path, [out_dir], what)


def _viewable(path: str | Path, operator: list[Path], recorded: list[str], what: str, env: str) -> Path:
    resolved = Path(path).expanduser().resolve()
    if _under(resolved, list(operator)) and (not recorded or _under(resolved, list(recorded))):
        return resolved
    raise UnsafePathError(REFUSED.format(what=what, env=env))


def scan_file(path: str | Path, run_data: str | list[str] | None) -> Path:
    """A scan the dashboard may show: inside ``$SSLMRI_DATA_ROOTS`` and the run's recorded data folder(s)."""
    recorded = [run_data] if isinstance(run_data, str) else [r for r in (run_data or []) if r]
    return _viewable(path, data_roots(), recorded, "scan", DATA_ROOTS_ENV)


def viewable_run_file(path: str | Path, out_dir: str | None, what: str = "file") -> Path:
    """A run's file the dashboard may read: inside ``$SSLMRI_RUNS_ROOTS`` and the run's own folder."""
    if not out_dir:
        raise UnsafePathError(REFUSED.format(what=what, env=RUNS_ROOTS_ENV))
    return _viewable(path, runs_roots(), [out_dir], what, RUNS_ROOTS_ENV)
