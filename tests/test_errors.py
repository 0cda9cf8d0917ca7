"""``cli._guarded``: every error becomes one line on stderr and the exit code of its kind."""

from __future__ import annotations

import pytest
import typer

import cli
from sslmri_core import errors


class _Diverged(errors.RunFailed):
    pass


def _exit(exc: BaseException, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    def action() -> None:
        raise exc

    with pytest.raises(typer.Exit) as info:
        cli._guarded(action)
    return info.value.exit_code, capsys.readouterr().err.strip()


@pytest.mark.parametrize(
    ("exc", "code", "line"),
    [
        (errors.UsageError("--epochs must be positive"), 2, "error: --epochs must be positive"),
        (ValueError("bad value"), 2, "error: bad value"),
        (FileNotFoundError("no such file"), 2, "error: no such file"),
        (_Diverged("loss became nan at step 3"), 1, "error: loss became nan at step 3"),
        (errors.Interrupted("stopped at step 3"), 130, "error: stopped at step 3 (the run is marked interrupted)"),
        (KeyboardInterrupt(), 130, "error: interrupted (the run is marked interrupted)"),
        (RuntimeError("boom"), 1, "error: RuntimeError: boom (set SSLMRI_DEBUG=1 for a traceback)"),
    ],
)
def test_errors_map_to_one_line_and_their_exit_code(exc: BaseException, code: int, line: str,
                                                    capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSLMRI_DEBUG", raising=False)
    assert _exit(exc, capsys) == (code, line)


def test_library_errors_are_usage_errors_and_a_diverged_loss_a_failed_run() -> None:
    from sslmri_core.data.decode import DecodeError
    from sslmri_core.data.sources import DataError
    from sslmri_core.data.splits import LeakySplitError
    from sslmri_core.store.writer import StoreError

    for cls in (StoreError, DataError, LeakySplitError, DecodeError):
        assert issubclass(cls, errors.UsageError) and issubclass(cls, ValueError), cls
    assert issubclass(StoreError, RuntimeError)  # what caught it before still does


def test_training_errors_keep_their_kind() -> None:
    pytest.importorskip("torch")
    from sslmri_core.train.models import ModelError
    from sslmri_core.train.pretrain import NonFiniteLossError
    from sslmri_core.train.weights import WeightsError

    assert issubclass(ModelError, errors.UsageError) and issubclass(WeightsError, errors.UsageError)
    assert issubclass(NonFiniteLossError, errors.RunFailed)


def test_debug_shows_the_traceback_of_a_crash_but_not_of_a_user_error(monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SSLMRI_DEBUG", "1")
    with pytest.raises(RuntimeError, match="boom"):
        cli._guarded(lambda: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(_Diverged):
        cli._guarded(lambda: (_ for _ in ()).throw(_Diverged("nan")))
    assert _exit(errors.UsageError("bad"), capsys) == (2, "error: bad")
