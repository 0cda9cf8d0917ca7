"""The built-in synthetic brain-MRI set: layout, determinism and placed ground truth."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cli import app
from sslmri_core.config import TASKS, SynthConfig
from sslmri_core.data.synth import SynthSummary, generate
from sslmri_core.errors import UsageError

SIZE = 64
HEALTHY = {
    "tumor": "notumor", "alzheimer": "Non Demented", "parkinsons": "normal", "ms": "no_lesion",
}
NAME = re.compile(r"^(sub-[a-z]+s\d+c\d+n\d{4})_slice-(\d{3})\.png$")


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.png") if not p.name.endswith("_mask.png"))


def _mask_of(image: Path) -> Path:
    return image.with_name(image.stem + "_mask.png")


def _mask_area(image: Path) -> float:
    return float((np.asarray(Image.open(_mask_of(image))) > 0).mean())


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SynthSummary]:
    """Every task, 2 subjects per class, 2 slices each, 64 px."""
    out = tmp_path_factory.mktemp("synth")
    config = SynthConfig(task="all", subjects=2, slices_per_subject=2, size=SIZE, seed=0)
    return out, generate(out, config)


def test_layout_folder_per_class_with_masks(full: tuple[Path, SynthSummary]) -> None:
    out, _ = full
    assert sorted(p.name for p in out.iterdir()) == sorted(TASKS)
    for task, classes in TASKS.items():
        task_dir = out / task
        assert sorted(p.name for p in task_dir.iterdir() if p.is_dir()) == sorted(classes)
        assert (task_dir / "synth.json").is_file()
        for cls in classes:
            images = _images(task_dir / cls)
            assert len(images) == 2 * 2
            for image in images:
                match = NAME.match(image.name)
                assert match, image.name
                assert match.group(1).startswith(f"sub-{task}")
                mask_path = _mask_of(image)
                assert mask_path.is_file()
                with Image.open(image) as img, Image.open(mask_path) as mask:
                    assert img.mode == "L" and mask.mode == "L"
                    assert img.size == mask.size == (SIZE, SIZE)
                    assert set(np.unique(np.asarray(mask))) <= {0, 255}
                    pixels = np.asarray(img)
                assert pixels.max() > 150  # a bright brain, not an empty frame
                assert np.median(pixels[:3, :]) < 30  # dark background at the border


def test_lesion_classes_have_masks_on_every_slice(full: tuple[Path, SynthSummary]) -> None:
    out, _ = full
    for task, classes in TASKS.items():
        for cls in classes:
            areas = [_mask_area(p) for p in _images(out / task / cls)]
            assert len(areas) == 4, (task, cls)
            if cls == HEALTHY[task]:
                assert all(a == 0 for a in areas), (task, cls, areas)
            else:
                assert all(a > 0 for a in areas), (task, cls, areas)


def test_alzheimer_changed_area_grows_with_grade(full: tuple[Path, SynthSummary]) -> None:
    out, _ = full
    means = [np.mean([_mask_area(p) for p in _images(out / "alzheimer" / cls)])
             for cls in TASKS["alzheimer"]]
    assert means[0] == 0
    assert all(a < b for a, b in zip(means, means[1:])), means


def test_subject_ids_unique_across_classes_and_tasks(full: tuple[Path, SynthSummary]) -> None:
    out, _ = full
    owner: dict[str, tuple[str, str]] = {}
    for task, classes in TASKS.items():
        for cls in classes:
            for sid in {NAME.match(p.name).group(1) for p in _images(out / task / cls)}:
                assert owner.setdefault(sid, (task, cls)) == (task, cls), sid
    assert len(owner) == sum(len(c) for c in TASKS.values()) * 2


def test_summary_and_metadata_match_files(full: tuple[Path, SynthSummary]) -> None:
    out, summary = full
    assert summary.out == out
    counted = {t: {c: len(_images(out / t / c)) for c in cs} for t, cs in TASKS.items()}
    assert summary.tasks == counted
    assert summary.images == sum(sum(c.values()) for c in counted.values())
    assert summary.subjects == sum(len(c) for c in TASKS.values()) * 2
    assert summary.seconds > 0
    for task in TASKS:
        meta = json.loads((out / task / "synth.json").read_text())
        assert meta["config"]["seed"] == 0 and meta["task"] == task
        assert meta["sslmri_version"]
        files = {f"{s['class']}/{f}" for s in meta["subjects"] for f in s["files"]}
        on_disk = {f"{c}/{p.name}" for c in TASKS[task] for p in _images(out / task / c)}
        assert files == on_disk
        for subject in meta["subjects"]:
            assert [f"{subject['subject']}_slice-{z:03d}.png" for z in subject["slices"]] == \
                subject["files"]


def test_same_seed_same_bytes_new_seed_new_images(tmp_path: Path) -> None:
    config = SynthConfig(task="tumor", subjects=1, slices_per_subject=2, size=SIZE, seed=7)
    generate(tmp_path / "a", config)
    generate(tmp_path / "b", config)
    generate(tmp_path / "c", dataclasses.replace(config, seed=8))

    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.*"))}

    assert files(tmp_path / "a") == files(tmp_path / "b") and len(files(tmp_path / "a")) == 4 * 2 * 2 + 1
    from sslmri_core.data.audit.near import pixel_correlation

    for cls in TASKS["tumor"]:
        first = [np.asarray(Image.open(p)) for p in _images(tmp_path / "a" / "tumor" / cls)]
        other = [np.asarray(Image.open(p)) for p in _images(tmp_path / "c" / "tumor" / cls)]
        assert len(first) == len(other) == 2, cls
        # Another subject, not the same one with other noise: no slice is a near copy (the audit's rule).
        images = np.stack(first + other)
        a, b = np.meshgrid([0, 1], [2, 3], indexing="ij")
        assert pixel_correlation(images, a.ravel(), b.ravel()).max() < 0.96, cls


def test_subjects_do_not_depend_on_other_tasks(full: tuple[Path, SynthSummary],
                                               tmp_path: Path) -> None:
    out, _ = full
    generate(tmp_path, SynthConfig(task="parkinsons", subjects=2, slices_per_subject=2,
                                   size=SIZE, seed=0))
    for cls in TASKS["parkinsons"]:
        alone = _images(tmp_path / "parkinsons" / cls)
        within_all = _images(out / "parkinsons" / cls)
        assert [p.name for p in alone] == [p.name for p in within_all] and len(alone) == 4
        assert all(a.read_bytes() == b.read_bytes() for a, b in zip(alone, within_all))


def test_rewrite_replaces_its_own_task_folder_and_reports_progress(tmp_path: Path) -> None:
    config = SynthConfig(task="ms", subjects=1, slices_per_subject=2, size=SIZE, seed=1)
    generate(tmp_path, config)
    first = (tmp_path / "ms" / "synth.json").read_text()
    calls: list[tuple[int, int]] = []
    summary = generate(tmp_path, dataclasses.replace(config, seed=2),
                       progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 2), (2, 2)] and summary.images == 4
    assert (tmp_path / "ms" / "synth.json").read_text() != first  # the new set replaced the old one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ms"]  # no temporary folder left behind


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_folder_synth_did_not_write_is_never_replaced(tmp_path: Path) -> None:
    """``data synth ../shared/data --task tumor`` must not wipe the real tumour folder."""
    real = tmp_path / "tumor"
    (real / "glioma").mkdir(parents=True)
    (real / "glioma" / "Tr-gl_0010.jpg").write_bytes(b"a real scan")
    (real / "reviewed_labels.csv").write_text("file,label\nTr-gl_0010.jpg,glioma\n")
    before = _tree(tmp_path)
    result = CliRunner().invoke(app, ["data", "synth", str(tmp_path), "--task", "tumor", "--subjects", "1"])
    assert result.exit_code == 2 and "refusing to replace" in result.stderr and str(real) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and _tree(tmp_path) == before

    # Its own set with one file it does not list (a reviewer's notes) is refused the same way.
    config = SynthConfig(task="ms", subjects=1, slices_per_subject=2, size=SIZE, seed=1)
    generate(tmp_path / "own", config)
    (tmp_path / "own" / "ms" / "lesion" / "notes.txt").write_text("reviewed by Dr. A")
    kept = _tree(tmp_path / "own")
    with pytest.raises(UsageError, match=r"1 file\(s\) `data synth` did not write \(e.g. lesion/notes.txt\)"):
        generate(tmp_path / "own", config)
    assert _tree(tmp_path / "own") == kept


def test_unknown_task_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown task"):
        generate(tmp_path, SynthConfig(task="stroke"))
