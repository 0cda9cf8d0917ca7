"""Every option is checked before a run is recorded: exit 2, one line naming the option, no run in the store."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_json import invoke

BIG = "99999999999999999999"  # above the store's BIGINT (2**63 - 1)
FAST = ["--model", "test_resnet", "--image-size", "64", "--epochs", "1", "--batch-size", "8", "--no-progress"]
PRE = ["pretrain", "--data", "{data}", *FAST, "--max-steps", "1"]
FT = ["finetune", "--data", "{data}", *FAST, "--min-steps", "2"]


@pytest.fixture(scope="module")
def pretrained(synth_tumor: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A store with a finished pretraining run and a second whose checkpoint holds another architecture."""
    import torch

    from sslmri_core.store.writer import RunStore
    from sslmri_core.train.checkpoints import load_checkpoint
    from sslmri_core.train.models import create_encoder

    root = tmp_path_factory.mktemp("validation")
    db = f"sqlite:///{root / 'runs.db'}"
    code, pre, err = invoke([*[a.format(data=synth_tumor) for a in PRE], "--db", db, "--out", str(root / "runs"),
                             "--json"])
    assert code == 0, err
    store = RunStore(db)
    record = store.get_run(pre["run_id"])
    state = load_checkpoint(record.checkpoint_path)
    state["encoder"] = create_encoder("test_efficientnet").state_dict()
    other = store.start_run("pretrain", record.config)
    folder = root / "runs" / f"run-{other}"
    folder.mkdir(parents=True)
    torch.save(state, folder / "checkpoint.pt")
    store.update_run(other, out_dir=str(folder), checkpoint_path=str(folder / "checkpoint.pt"))
    store.end_run(other)
    store.engine.dispose()
    return {"db": db, "pre": str(pre["run_id"]), "swapped": str(other), "out": str(root / "runs")}


def _run_ids(db: str) -> list[int]:
    code, rows, err = invoke(["runs", "list", "--db", db, "--json"])
    assert code == 0, err
    return [r["run_id"] for r in rows]


CASES = [
    ([*PRE, "--warmup-epochs", "nan"], "--warmup-epochs"),
    ([*PRE, "--warmup-epochs", "-3"], "--warmup-epochs"),
    ([*PRE, "--lr", "inf"], "--lr"),
    ([*PRE, "--lr", "nan"], "--lr"),
    ([*PRE, "--lr", "-1"], "--lr"),
    ([*PRE, "--weight-decay", "nan"], "--weight-decay"),
    ([*PRE, "--temperature", "1e-30"], "--temperature"),
    ([*PRE, "--augment", "flip_p=2"], "--augment flip_p"),
    ([*PRE, "--checkpoint-minutes", "inf"], "--checkpoint-minutes"),
    (["pretrain", "--resume", BIG], "--resume"),
    ([*FT, "--init", "scratch", "--lr", "inf"], "--lr"),
    ([*FT, "--init", "scratch", "--lr", "nan"], "--lr"),
    ([*FT, "--init", "scratch", "--lr", "-1"], "--lr"),
    ([*FT, "--init", "scratch", "--encoder-lr-scale", "nan"], "--encoder-lr-scale"),
    ([*FT, "--from-run", BIG], "--from-run"),
    ([*FT, "--from-run", "{pre}", "--model", "test_efficientnet"], "--from-run {pre}"),
    ([*FT, "--from-run", "{swapped}"], "--from-run {swapped}"),
    (["experiment", "--data", "{data}", "--pretrain-run", BIG], "--pretrain-run"),
    (["experiment", "--data", "{data}", "--lr", "nan"], "--lr"),
    (["leakage", "--data", "{data}", "--lr", "inf"], "--lr"),
    (["gradcam", "--run", BIG], "--run"),
    (["gradcam", "--run", "{pre}", "--threshold", "nan"], "--threshold"),
    (["embed", "--run", BIG], "--run"),
    (["evaluate", "--run", BIG, "--data", "{data}"], "--run"),
    (["runs", "show", BIG], "RUN_ID"),
    (["data", "check", "{data}", "--export", "/no/such/dir/m.csv"], "--export"),
    (["data", "check", "{data}", "--export", "{tmp}/m.xlsx"], "--export"),
    (["data", "synth", "{tmp}/synth", "--seed", "-1"], "--seed"),
    (["augment-preview", "{tmp}/grid.png", "--data", "{data}", "--augment", "rotate_deg=nan"], "--augment rotate_deg"),
]
NO_STORE = ("augment-preview", "synth")  # commands without --db


@pytest.mark.parametrize(("args", "needle"), CASES, ids=[" ".join(a[:1] + a[-2:]) for a, _ in CASES])
def test_a_bad_option_exits_2_in_one_line_and_records_no_run(
    args: list[str], needle: str, pretrained: dict[str, str], synth_tumor: Path, tmp_path: Path
) -> None:
    from sslmri_core.store.writer import RunStore

    uses_runs = any("{pre}" in a or "{swapped}" in a for a in args)
    db = pretrained["db"] if uses_runs else f"sqlite:///{tmp_path / 'runs.db'}"
    if not uses_runs:
        RunStore(db).engine.dispose()  # an empty store, so ``runs list`` can answer
    before = _run_ids(db)
    values = {"data": str(synth_tumor), "tmp": str(tmp_path), **pretrained}
    argv = [a.format(**values) for a in args] + ([] if set(args[:2]) & set(NO_STORE) else ["--db", db])
    if args[0] in ("pretrain", "finetune", "experiment", "leakage", "gradcam") and "--resume" not in args:
        argv += ["--out", str(tmp_path / "runs")]
    code, _, err = invoke(argv)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert needle.format(**values) in err and "Traceback" not in err
    assert _run_ids(db) == before
    assert not [p for p in ("runs", "synth", "grid.png") if (tmp_path / p).exists()]
    assert not Path("/no/such/dir").exists()



@pytest.mark.parametrize("command", ["check", "audit"])
def test_a_folder_with_nothing_usable_exits_2(command: str, tmp_path: Path) -> None:
    """Input the user can fix (README): exit 2, the error last (``data check`` first lists what it found)."""
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    (empty / "a" / "x.png").write_bytes(b"not an image")
    code, _, err = invoke(["data", command, str(empty), "--db", f"sqlite:///{tmp_path / 'runs.db'}"])
    assert code == 2, err
    assert err.strip().splitlines()[-1].startswith(f"error: no usable images in {empty}")
