"""``pretrain --unlabeled DIR``: more pool folders, labels ignored, copies of the task's val/test images left out."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sslmri_core.config import PretrainConfig, SynthConfig
from sslmri_core.store.writer import RunStore
from sslmri_core.train.checkpoints import load_checkpoint
from sslmri_core.train.pool import load_pretrain_pool, monitor_set, pool_hash, pool_index
from sslmri_core.train.pretrain import pretrain, validate_pretrain


@pytest.fixture(scope="module")
def unlabeled(synth_tumor: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of other synthetic slices (another task's classes, another seed) plus a byte copy of one of the
    task's test images and a near copy (resized, re-encoded as JPEG) of one of its val images."""
    from sslmri_core.data.synth import generate

    out = tmp_path_factory.mktemp("unlabeled")
    generate(out / "gen", SynthConfig(task="ms", subjects=3, slices_per_subject=2, size=64, seed=77))
    folder = out / "extra"
    shutil.copytree(out / "gen" / "ms", folder)
    data, _, splits = load_pretrain_pool(_cfg(synth_tumor, tmp_path_factory.mktemp("runs")))
    test_image = Path(data.items[splits.index("test")].path)
    val_image = Path(data.items[splits.index("val")].path)
    shutil.copyfile(test_image, folder / "lesion" / "copy-of-a-test-image.png")
    with Image.open(val_image) as img:
        img.convert("L").resize((72, 72), Image.BILINEAR).save(folder / "no_lesion" / "near-copy-of-val.jpg",
                                                               quality=90)
    return folder


def _cfg(data: Path, out: Path, *unlabeled: Path, **kw: object) -> PretrainConfig:
    return PretrainConfig(data=[str(data)], unlabeled=[str(u) for u in unlabeled], model="test_resnet", image_size=64,
                          batch_size=8, precision="fp32", out=str(out), **kw)  # type: ignore[arg-type]


def test_copies_of_val_and_test_images_are_left_out_and_labels_never_reach_the_monitor(
    synth_tumor: Path, unlabeled: Path, tmp_path: Path
) -> None:
    # Caught bugs: the unlabeled images are not compared (or by file hash only: the JPEG near copy stays in);
    # their class folders become monitor classes or bank/query images; the pool fingerprint ignores them.
    folder = unlabeled
    base_found, base_roles, _ = load_pretrain_pool(_cfg(synth_tumor, tmp_path))
    cfg = _cfg(synth_tumor, tmp_path, folder)
    found, roles, splits = load_pretrain_pool(cfg)
    n_base = len(base_found.items)
    assert roles[:n_base] == base_roles and splits[n_base:] == ["unlabeled"] * (len(found.items) - n_base)
    extra = {Path(it.path).name: role for it, role in zip(found.items[n_base:], roles[n_base:], strict=True)}
    assert len(extra) == 3 * 2 * 2 + 2  # 2 classes x 3 subjects x 2 slices, and the two copies
    assert extra.pop("copy-of-a-test-image.png") == "overlap" and extra.pop("near-copy-of-val.jpg") == "overlap"
    assert set(extra.values()) == {"pool"}

    pool = np.array([i for i, r in enumerate(roles) if r == "pool"], dtype=np.int64)
    base_pool = np.array([i for i, r in enumerate(base_roles) if r == "pool"], dtype=np.int64)
    assert pool_hash(found.items, pool) != pool_hash(base_found.items, base_pool)

    mon = monitor_set(found, pool, splits, cfg)
    assert mon is not None and mon.n_classes == 4  # the tumour classes only, not lesion / no_lesion
    unlabeled_in_pool = np.flatnonzero(np.array([splits[int(i)] for i in pool]) == "unlabeled")
    assert len(unlabeled_in_pool) == 12 and (mon.labels[unlabeled_in_pool] == -1).all()
    assert not set(unlabeled_in_pool) & (set(mon.bank.tolist()) | set(mon.queries.tolist()))
    assert (mon.probe_labels()[unlabeled_in_pool] == -1).all()  # the online probe skips them too


def test_a_run_stores_the_overlap_role_and_its_pool_content(
    synth_tumor: Path, unlabeled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Caught bugs: the left-out copies are stored as pool images (finetune's overlap check would then count
    # them), the counts are not logged or printed, the probe learns the unlabeled folder's classes.
    folder = unlabeled
    store = RunStore(f"sqlite:///{tmp_path / 'runs.db'}")
    result = pretrain(_cfg(synth_tumor, tmp_path / "runs", folder, max_steps=2), store, show_progress=False)
    params = store.params(result.run_id)
    assert (params["unlabeled_images"], params["unlabeled_overlap"]) == ("14", "2")
    assert "--unlabeled: 2 of 14 images left out: copies of the task's val/test images" in capsys.readouterr().err
    split_of = store.split_of(result.run_id)
    assert split_of[str(folder / "lesion" / "copy-of-a-test-image.png")] == "overlap"
    assert split_of[str(folder / "no_lesion" / "near-copy-of-val.jpg")] == "overlap"
    assert sum(1 for k, s in split_of.items() if k.startswith(str(folder)) and s == "pool") == 12
    assert int(params["n_images"]) == sum(1 for s in split_of.values() if s == "pool")
    # The pool by content: the unlabeled pool images are in it, the copy of a test image is not (the near copy
    # of a val image matches its original, which is in the pool).
    index = pool_index(store, result.run_id)
    found, roles, splits = load_pretrain_pool(_cfg(synth_tumor, tmp_path, folder))
    assert found.thumbs is not None
    matched = index.matches(found.hashes, found.thumbs)
    names = [Path(it.path).name for it in found.items]
    assert matched[[i for i, r in enumerate(roles) if r == "pool"]].all()
    assert not matched[names.index("copy-of-a-test-image.png")]
    assert not matched[[i for i, s in enumerate(splits) if s == "test"]].any()
    assert load_checkpoint(result.checkpoint)["probe"]["layer"]["weight"].shape[0] == 4


def test_unlabeled_folders_are_checked(synth_tumor: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--unlabeled: no such folder"):
        validate_pretrain(_cfg(synth_tumor, tmp_path, tmp_path / "missing"))
    with pytest.raises(ValueError, match=r"--unlabeled .* overlaps --data"):
        validate_pretrain(_cfg(synth_tumor, tmp_path, synth_tumor / "glioma"))
    with pytest.raises(ValueError, match="--preprocess must be one of"):
        validate_pretrain(_cfg(synth_tumor, tmp_path, preprocess="blur"))
    with pytest.raises(ValueError, match="--compile must be one of"):
        validate_pretrain(_cfg(synth_tumor, tmp_path, compile="maybe"))
