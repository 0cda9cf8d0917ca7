"""The errors a command reports in one line, each carrying its exit code.

``cli.py`` turns any :class:`SslmriError` into ``error: <message>`` on stderr and exits with its
``exit_code``: 2 for input the user can fix (an option, a file, a split), 1 for a run that failed
while running (``SSLMRI_DEBUG=1`` shows its traceback instead), 130 for an interrupted one.
``ValueError`` subclasses stay ``ValueError`` so library callers that already catch it keep working.

The library's own errors derive from these: ``StoreError`` (also still a ``RuntimeError``),
``DataError``, ``LeakySplitError``, ``DecodeError``, ``ModelError``, ``WeightsError``,
``CheckpointError`` and ``UnsafePathError`` are :class:`UsageError`; ``NonFiniteLossError`` (a
diverged loss) is :class:`RunFailed`.
"""

from __future__ import annotations


class SslmriError(Exception):
    """Base of every error sslmri reports as one line."""

    exit_code = 1


class UsageError(SslmriError, ValueError):
    """Bad input the user can fix before anything runs: an option, a data folder, a path (exit 2)."""

    exit_code = 2


class RunFailed(SslmriError, RuntimeError):
    """A run that started and could not finish (a diverged loss, a full disk) (exit 1)."""

    exit_code = 1


class Interrupted(SslmriError):
    """A run stopped by the user (Ctrl-C, SIGTERM) (exit 130)."""

    exit_code = 130
