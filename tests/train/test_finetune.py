"""Fine-tuning arms, selection on val only, ImageNet weights from a local file, what a run stores."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sslmri_core.train import finetune as ft
from sslmri_core.config import FinetuneConfig, to_dict
from sslmri_core.store.writer import RunStore
from cli_json import invoke as _invoke

TINY = dict(model="test_resnet", image_size=64, batch_size=8, precision="fp32", bootstrap=50, min_steps=0)


def _cfg(data: Path, tmp_path: Path, **kw: object) -> FinetuneConfig:
    return FinetuneConfig(**{"data": str(data), "init": "scratch", "mode": "full", "epochs": 3,
                             "out": str(tmp_path / "runs"), **TINY, **kw})  # type: ignore[arg-type]




def test_selection_epoch_depends_only_on_val(synth_tumor: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = RunStore(f"sqlite:///{tmp_path / 'runs.db'}")
    clean = ft.finetune(_cfg(synth_tumor, tmp_path), store, show_progress=False)

    original = ft.split_data

    def corrupt_test(data, cfg):  # type: ignore[no-untyped-def]
        split, labeled = original(data, cfg)
        rng = np.random.default_rng(1)
        data.images[split.test] = rng.integers(0, 255, data.images[split.test].shape, dtype=np.uint8)
        for i in split.test:  # every test label moved to another class
            item = data.items[int(i)]
            moved = data.classes[(data.classes.index(item.label) + 1) % len(data.classes)]
            data.items[int(i)] = dataclasses.replace(item, label=moved)
        return split, labeled

    monkeypatch.setattr(ft, "split_data", corrupt_test)
    corrupted = ft.finetune(_cfg(synth_tumor, tmp_path), store, show_progress=False)
    assert corrupted.metrics["best_epoch"] == clean.metrics["best_epoch"]
    for key in ("val_balanced_accuracy", "train_loss"):
        assert store.metric_series(corrupted.run_id, key) == store.metric_series(clean.run_id, key)
    from sslmri_core.store.queries import predictions_frame

    # the test split really did change (noise images, other labels): its predictions differ
    before, after = (predictions_frame(store.url, r.run_id, "test").sort_values("scan") for r in (clean, corrupted))
    assert before["scan"].tolist() == after["scan"].tolist()
    assert before["probs"].tolist() != after["probs"].tolist()
    assert before["true_label"].tolist() != after["true_label"].tolist()


def test_a_run_stores_slice_and_subject_evaluation(synth_tumor: Path, tmp_path: Path) -> None:
    store = RunStore(f"sqlite:///{tmp_path / 'runs.db'}")
    result = ft.finetune(_cfg(synth_tumor, tmp_path, epochs=1, label_fraction=0.5, seed=1), store, show_progress=False)
    m = store.final_metrics(result.run_id)
    for split in ("val", "test"):
        for key in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "ece"):
            assert f"{split}_{key}" in m and f"{split}_subject_{key}" in m
        assert {f"{split}_intervals", f"{split}_reliability", f"{split}_roc"} <= set(store.results(result.run_id))
    intervals = store.results(result.run_id)["test_intervals"]
    assert intervals["n_boot"] == 50 and set(intervals) >= {"slice", "subject"}
    # 4-5 test subjects, 1-2 per class: too few for a bootstrap, so subject accuracy gets the exact interval
    from sslmri_core.evaluation.stats import clopper_pearson

    n = intervals["n_subjects"]
    assert n == int(store.params(result.run_id)["n_test_groups"]) < 10 and intervals["few_subjects"] is True
    assert intervals["subject"]["accuracy"] == pytest.approx(clopper_pearson(round(m["test_subject_accuracy"] * n), n))
    from sslmri_core.store.queries import confusion

    assert confusion(store.url, result.run_id, "test", "subject") is not None
    params = dict(_params(store, result.run_id))
    assert params["arm"] == "scratch" and params["fraction"] == "0.5" and params["seed"] == "1"
    assert int(params["label_count"]) == int(params["n_labeled"]) < int(params["n_train"])
    assert len(json.loads(params["class_weights"])) == 4


def test_a_failure_while_setting_up_the_run_marks_it_failed(
    synth_tumor: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Everything after the run row exists is inside its status tracking: a store write that fails
    while the run is set up (here the data set's manifest) ends it ``failed``, never left ``running``."""
    store = RunStore(f"sqlite:///{tmp_path / 'runs.db'}")

    def no_space(*_args: object, **_kwargs: object) -> int:
        raise OSError("no space left on device")

    monkeypatch.setattr(store, "save_manifest", no_space)
    with pytest.raises(OSError, match="no space left"):
        ft.finetune(_cfg(synth_tumor, tmp_path, epochs=1), store, show_progress=False)
    (run,) = store.list_runs()
    assert run.status == "failed" and "no space left" in (run.error or "") and run.ended_at is not None


def _params(store: RunStore, run_id: int) -> list[tuple[str, str]]:
    from sqlalchemy import select

    from sslmri_core.store.schema import Param

    with store.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(Param.key, Param.value).where(Param.run_id == run_id))]


def test_class_weights_are_inverse_frequency() -> None:
    w = ft._class_weights(np.array([0, 0, 0, 1, 2, 2]), 4)
    np.testing.assert_allclose(w, [6 / 9, 2.0, 1.0, 0.0])


def _imagenet_like_file(path: Path) -> dict[str, torch.Tensor]:
    import timm

    torch.manual_seed(5)
    rgb = timm.create_model("test_resnet", pretrained=False, in_chans=3, num_classes=1000)
    state = {k: v.clone() for k, v in rgb.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({"state_dict": state}, path)
    return state


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_imagenet_weights_load_into_one_channel_encoder(tmp_path: Path, suffix: str) -> None:
    from sslmri_core.train.models import create_encoder
    from sslmri_core.train.weights import load_into_encoder

    state = _imagenet_like_file(tmp_path / f"w{suffix}")
    encoder = create_encoder("test_resnet")
    load_into_encoder(encoder, tmp_path / f"w{suffix}")
    got = encoder.state_dict()
    torch.testing.assert_close(got["conv1.0.weight"], state["conv1.0.weight"].sum(dim=1, keepdim=True))
    torch.testing.assert_close(got["layer4.0.conv1.weight"], state["layer4.0.conv1.weight"])


def test_imagenet_arm_end_to_end_and_encoder_lr_scale(synth_tumor: Path, tmp_path: Path) -> None:
    weights = tmp_path / "imagenet.pth"
    state = _imagenet_like_file(weights)
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    common = ["finetune", "--data", str(synth_tumor), "--init", "imagenet", "--weights", str(weights), "--model", "test_resnet", "--min-steps", "2",
              "--image-size", "64", "--batch-size", "8", "--epochs", "1", "--bootstrap", "20", "--no-progress",
              "--db", db, "--out", str(tmp_path / "runs"), "--json"]
    deltas = {}
    for scale in ("1e-9", "1.0"):
        code, out, err = _invoke([*common, "--encoder-lr-scale", scale])
        assert code == 0, err
        ckpt = torch.load(out["checkpoint"], weights_only=True)["model"]
        deltas[scale] = float((ckpt["encoder.layer4.0.conv1.weight"] - state["layer4.0.conv1.weight"]).abs().max())
    assert deltas["1e-9"] < 1e-8 < deltas["1.0"]
    record = RunStore(db).get_run(out["run_id"])
    assert record.config["init"] == "imagenet" and record.config["weights"] == str(weights)


@pytest.mark.parametrize("setup, expected", [
    ("missing", "--weights: no such file"),
    ("garbage", "--weights: "),
    ("other_model", "does not fit"),
    ("no_weights", "--init imagenet needs --weights"),
])
def test_bad_weights_are_one_clear_line(synth_tumor: Path, tmp_path: Path, setup: str, expected: str) -> None:
    path = tmp_path / "w.pth"
    if setup == "garbage":
        path.write_bytes(b"not a checkpoint")
    elif setup == "other_model":
        torch.save({"fc.weight": torch.zeros(3, 3)}, path)
    args = ["finetune", "--data", str(synth_tumor), "--init", "imagenet", "--model", "test_resnet", "--min-steps", "2",
            "--db", f"sqlite:///{tmp_path / 'runs.db'}", "--no-progress"]
    if setup != "no_weights":
        args += ["--weights", str(path)]
    code, _, err = _invoke(args)
    assert code == 2 and expected in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert RunStore(f"sqlite:///{tmp_path / 'runs.db'}").list_runs() == []  # nothing recorded


def test_linear_probe_keeps_the_encoder_frozen(synth_tumor: Path, tmp_path: Path) -> None:
    weights = tmp_path / "imagenet.pth"
    state = _imagenet_like_file(weights)
    store = RunStore(f"sqlite:///{tmp_path / 'runs.db'}")
    result = ft.finetune(_cfg(synth_tumor, tmp_path, init="imagenet", weights=str(weights), mode="linear", epochs=2),
                         store, show_progress=False)
    ckpt = torch.load(result.checkpoint, weights_only=True)["model"]
    torch.testing.assert_close(ckpt["encoder.layer4.0.conv1.weight"], state["layer4.0.conv1.weight"])
    assert dict(_params(store, result.run_id))["arm"] == "imagenet-linear"
    assert to_dict(FinetuneConfig())["class_weighted"] is True


def test_nifti_slices_are_stored_one_prediction_each(tmp_path: Path) -> None:
    """A volume's slices are separate scans in the store (``path#z=k``), so the Scan Explorer can open
    each one and order them; keyed by the volume's path they would collapse into one scan."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    data = tmp_path / "vols"
    for c, label in enumerate(("healthy", "lesion")):
        (data / label).mkdir(parents=True)
        for s in range(6):
            vol = rng.integers(0, 40, (32, 32, 4)).astype(np.int16)
            vol[8:24, 8:24, :] += 100 + 60 * c  # a head; the lesion class is brighter
            nib.save(nib.Nifti1Image(vol, np.eye(4)), str(data / label / f"sub-{label}{s}.nii.gz"))
    store = RunStore(f"sqlite:///{tmp_path / 'runs.db'}")
    result = ft.finetune(_cfg(data, tmp_path, epochs=1), store, show_progress=False)
    from sslmri_core.store.queries import predictions_frame

    scans = predictions_frame(store.url, result.run_id)["scan"].tolist()
    assert scans and len(set(scans)) == len(scans)
    assert all("#z=" in s and s.split("#z=")[0].endswith(".nii.gz") for s in scans)


# -- recipes: --preset, --preprocess, label smoothing, test-time flips ---------------------------------------
def test_a_preset_sets_the_recipe_and_the_options_given_win(synth_tumor: Path, tmp_path: Path) -> None:
    from sslmri_core.config import PRESETS

    db = f"sqlite:///{tmp_path / 'runs.db'}"
    code, out, err = _invoke(["finetune", "--data", str(synth_tumor), "--init", "scratch", "--preset", "cpu",
                              "--model", "test_resnet", "--image-size", "64", "--batch-size", "8", "--steps", "2",
                              "--bootstrap", "0", "--preprocess", "crop", "--no-progress", "--db", db,
                              "--out", str(tmp_path / "runs"), "--json"])
    assert code == 0, err
    cfg = RunStore(db).get_run(out["run_id"]).config
    recipe = PRESETS["cpu"]["finetune"]
    assert cfg["preset"] == "cpu" and cfg["label_smoothing"] == recipe["label_smoothing"] > 0
    assert cfg["tta"] is True and cfg["augment"] == dataclasses.asdict(recipe["augment"])
    assert (cfg["model"], cfg["image_size"], cfg["preprocess"]) == ("test_resnet", 64, "crop")  # given options win
    code, _, err = _invoke(["finetune", "--data", str(synth_tumor), "--init", "scratch", "--preset", "laptop",
                            "--db", db])
    assert code == 2 and err.strip().splitlines() == ["error: --preset must be one of cpu, gpu, got 'laptop'"]


def test_augment_changes_only_the_named_settings_of_the_recipes_augmentation(synth_tumor: Path,
                                                                              tmp_path: Path) -> None:
    from sslmri_core.config import PRESETS

    db = f"sqlite:///{tmp_path / 'runs.db'}"
    args = ["finetune", "--data", str(synth_tumor), "--init", "scratch", "--preset", "cpu", "--model", "test_resnet",
            "--image-size", "64", "--steps", "2", "--bootstrap", "0", "--no-progress", "--db", db,
            "--out", str(tmp_path / "runs"), "--json"]
    code, out, err = _invoke([*args, "--augment", "bias_field=0,noise_std=0"])
    assert code == 0, err
    stored = RunStore(db).get_run(out["run_id"]).config["augment"]
    recipe = dataclasses.asdict(PRESETS["cpu"]["finetune"]["augment"])
    assert recipe["bias_field"] > 0 and recipe["noise_std"] > 0
    assert stored == {**recipe, "bias_field": 0.0, "noise_std": 0.0}  # the rest stays the recipe's
    runs_before = len(RunStore(db).list_runs())
    code, _, err = _invoke([*args, "--augment", "sharpness=2"])
    assert code == 2 and err.strip().splitlines()[0].startswith("error: --augment: expected name=value")
    assert len(RunStore(db).list_runs()) == runs_before


def test_weight_decay_option_shrinks_the_weights_and_is_stored(synth_tumor: Path, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    args = ["finetune", "--data", str(synth_tumor), "--init", "scratch", "--model", "test_resnet", "--image-size", "64",
            "--steps", "3", "--lr", "0.01", "--bootstrap", "0", "--no-progress", "--db", db, "--json"]
    norms = {}
    for decay in ("0", "10"):  # same seed, data and start: only the decay differs
        code, out, err = _invoke([*args, "--weight-decay", decay, "--out", str(tmp_path / decay)])
        assert code == 0, err
        assert RunStore(db).get_run(out["run_id"]).config["weight_decay"] == float(decay)
        ckpt = torch.load(out["checkpoint"], weights_only=True)["model"]
        norms[decay] = float(ckpt["encoder.layer4.0.conv1.weight"].norm())
    assert norms["10"] < 0.95 * norms["0"]  # AdamW's decoupled decay: x (1 - 0.01 x 10) per step
    runs_before = len(RunStore(db).list_runs())
    code, _, err = _invoke([*args, "--weight-decay", "-1"])
    assert code == 2 and "--weight-decay" in err and len(err.strip().splitlines()) == 1
    assert len(RunStore(db).list_runs()) == runs_before


def test_a_test_class_with_no_training_image_is_named(synth_lonely_class: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    data = synth_lonely_class  # notumor is one subject: the fold that tests it trains without the class
    cfg = _cfg(data, tmp_path, folds=5, fold=0, steps=1, bootstrap=0)
    loaded = ft.load_finetune_data(cfg)
    flagged = [ft.untrained_classes(loaded, *ft.split_data(loaded, dataclasses.replace(cfg, fold=k)))
               for k in range(5)]
    assert sorted(flagged) == [[], [], [], [], ["notumor"]]
    store = RunStore(f"sqlite:///{tmp_path / 'runs.db'}")
    run = ft.finetune(dataclasses.replace(cfg, fold=flagged.index(["notumor"])), store, show_progress=False)
    assert json.loads(store.params(run.run_id)["untrained_test_classes"] or "") == ["notumor"]
    assert "notumor have no labelled training image" in " ".join(capsys.readouterr().err.split())


def test_test_time_flips_average_the_image_and_its_mirror() -> None:
    from sslmri_core.train.models import Classifier, create_encoder
    from sslmri_core.train.predict import predict

    torch.manual_seed(0)
    model = Classifier(create_encoder("test_resnet"), 3).eval()
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (5, 32, 32), dtype=np.uint8))
    idx = np.arange(5)
    plain = predict(model, images, idx, torch.device("cpu"), "fp32")
    mirrored = predict(model, images.flip(-1), idx, torch.device("cpu"), "fp32")
    both = predict(model, images, idx, torch.device("cpu"), "fp32", tta=True)
    assert not np.allclose(plain, mirrored)
    np.testing.assert_allclose(both, (plain + mirrored) / 2, atol=1e-6)


def test_label_smoothing_reaches_the_loss(synth_tumor: Path, tmp_path: Path) -> None:
    store = RunStore(f"sqlite:///{tmp_path / 'runs.db'}")
    first_loss = {}
    for smoothing in (0.0, 0.3):  # same seed, data and start: only the loss's targets differ
        run = ft.finetune(_cfg(synth_tumor, tmp_path, steps=1, label_smoothing=smoothing, bootstrap=0, seed=3),
                          store, show_progress=False)
        first_loss[smoothing] = store.metric_series(run.run_id, "train_loss")[0][2]
    assert first_loss[0.0] != pytest.approx(first_loss[0.3], abs=1e-3)
