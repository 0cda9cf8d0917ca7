"""Data audit on small generated manifests: duplicates, near duplicates, leaks, confounds, JSON."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from sslmri_core.data.audit import AuditReport, audit_dataset
from sslmri_core.data.audit.hashing import hamming_pairs, phash64, popcount
from sslmri_core.data.audit.near import pixel_correlation
from sslmri_core.data.manifest import Manifest, ManifestRow

SIZE = 64


def _row(
    name: str,
    label: str,
    *,
    content: str | None = None,
    subject: str | None = None,
    split: str | None = None,
    width: int = SIZE,
    height: int = SIZE,
    mode: str = "L",
    slice_index: int | None = None,
) -> ManifestRow:
    path = f"/data/{label}/{name}.png"
    return ManifestRow(
        path=path,
        rel_path=f"{label}/{name}.png",
        label=label,
        folder_label=label,
        subject=subject,
        given_split=split,
        content_hash=content or f"hash-{name}",
        file_size=1000 + len(name),
        width=width,
        height=height,
        mode=mode,
        bit_depth=8,
        slice_index=slice_index,
    )


def _pattern(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """A smooth random image uint8 ``(size, size)``: unrelated patterns are far apart in pHash."""
    coarse = (rng.random((6, 6)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), dtype=np.uint8)


def _patterns(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([_pattern(rng) for _ in range(n)])


def _manifest(rows: list[ManifestRow]) -> Manifest:
    return Manifest(root="/data", rows=rows, subject_pattern=None)


def _dumps(report: AuditReport) -> str:
    return json.dumps(report.to_json(), allow_nan=False)


# ---------------------------------------------------------------- exact duplicates


def _duplicate_set() -> tuple[Manifest, np.ndarray]:
    """a1=a2 (same class, same split); b1 (A, train) = b2 (B, test); c unique."""
    rows = [
        _row("a1", "A", content="h1", split="train"),
        _row("a2", "A", content="h1", split="train"),
        _row("b1", "A", content="h2", split="train"),
        _row("b2", "B", content="h2", split="test"),
        _row("c", "B", content="h3", split="val"),
    ]
    base = _patterns(3)
    return _manifest(rows), np.stack([base[0], base[0], base[1], base[1], base[2]])


def test_exact_duplicates_within_and_across_classes_and_splits() -> None:
    manifest, images = _duplicate_set()
    report = audit_dataset(manifest, images)
    s = report.summary
    assert s["split_source"] == "given"
    assert (s["duplicate_groups"], s["duplicate_images"], s["redundant_images"]) == (2, 4, 2)
    assert s["cross_class_duplicates"] == 1
    assert s["cross_split_duplicates"] == 1
    # copies of one image are an exact group, never also a near-duplicate group
    assert s["near_duplicate_groups"] == 0
    worst = report.duplicate_groups[0]  # cross-class groups come first
    assert worst["hash"] == "h2" and worst["cross_class"] and worst["cross_split"]
    assert worst["labels"] == ["A", "B"] and worst["splits"] == ["train", "test"]
    assert worst["keys"] == ["/data/A/b1.png", "/data/B/b2.png"]


def test_provided_splits_replace_given_ones() -> None:
    manifest, images = _duplicate_set()
    split_of = {r.key: "train" for r in manifest.usable}
    s = audit_dataset(manifest, images, split_of).summary
    assert s["split_source"] == "provided"
    assert s["cross_split_duplicates"] == 0
    assert s["cross_class_duplicates"] == 1


def test_no_split_information_counts_no_cross_split_duplicates() -> None:
    manifest, images = _duplicate_set()
    rows = [_row(r.rel_path.split("/")[1][:-4], r.label, content=r.content_hash) for r in manifest.rows]
    s = audit_dataset(_manifest(rows), images).summary
    assert s["split_source"] == "none"
    assert s["duplicate_groups"] == 2 and s["cross_split_duplicates"] == 0


def test_slices_of_one_volume_are_not_duplicates_of_each_other() -> None:
    rows = [_row("vol", "A", content="vol-hash", slice_index=k) for k in range(3)]
    rows.append(_row("copy", "A", content="vol-hash", slice_index=1))  # a byte-identical volume
    images = _patterns(3)
    s = audit_dataset(_manifest(rows), np.stack([*images, images[1]])).summary
    assert s["duplicate_groups"] == 1 and s["duplicate_images"] == 2


# ---------------------------------------------------------------- near duplicates


def test_brightened_noisy_copy_is_a_near_duplicate_and_unrelated_images_are_not() -> None:
    rng = np.random.default_rng(1)
    images = _patterns(8, seed=1)
    copy = np.clip(images[0] * 0.9 + 20 + rng.normal(0, 2, images[0].shape), 0, 255).astype(np.uint8)
    rows = [_row(f"img{i}", "AB"[i % 2]) for i in range(8)] + [_row("copy", "B")]
    report = audit_dataset(_manifest(rows), np.concatenate([images, copy[None]]))
    assert report.summary["duplicate_groups"] == 0
    assert report.summary["near_duplicate_groups"] == 1
    group = report.near_duplicate_groups[0]
    assert set(group["keys"]) == {"/data/A/img0.png", "/data/B/copy.png"}
    assert group["cross_class"] and report.summary["cross_class_near_duplicates"] == 1
    assert 0 <= group["max_distance"] <= 4


def test_near_groups_join_exact_copies_of_a_near_duplicate() -> None:
    images = _patterns(4, seed=2)
    near = np.clip(images[0].astype(int) + 10, 0, 255).astype(np.uint8)
    rows = [_row(f"img{i}", "A") for i in range(4)] + [_row("dup", "A", content="hash-img0"), _row("near", "A")]
    s = audit_dataset(_manifest(rows), np.concatenate([images, images[:1], near[None]])).summary
    assert s["duplicate_groups"] == 1
    assert s["near_duplicate_groups"] == 1 and s["near_duplicate_images"] == 3


def test_pixel_correlation_ignores_brightness_and_contrast() -> None:
    x = _patterns(2, seed=3)
    brighter = (x[0] // 2 + 60).astype(np.uint8)
    blank = np.full_like(x[0], 7)
    images = np.stack([x[0], brighter, x[1], blank, np.zeros_like(blank)])
    corr = pixel_correlation(images, np.array([0, 0, 3, 3]), np.array([1, 2, 4, 0]))
    assert corr[0] > 0.99
    assert corr[1] < 0.9
    assert corr[2] == 1.0  # two blank images
    assert corr[3] == 0.0  # a blank image and a real one


def test_hamming_pairs_match_a_slow_double_loop() -> None:
    rng = np.random.default_rng(4)
    # few distinct bits so that many pairs are close; > one 512-row block to cross a boundary
    hashes = rng.integers(0, 2**12, size=600, dtype=np.uint64) << np.uint64(20)
    i, j = hamming_pairs(hashes, 3)
    fast = set(zip(i.tolist(), j.tolist()))
    values = hashes.tolist()
    slow = {
        (a, b)
        for a in range(len(values))
        for b in range(a + 1, len(values))
        if bin(values[a] ^ values[b]).count("1") <= 3
    }
    assert fast == slow and len(slow) > 100


def test_popcount_fallback_matches_bin_count(monkeypatch: pytest.MonkeyPatch) -> None:
    words = np.random.default_rng(5).integers(0, 2**63, size=50, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    expected = [bin(w).count("1") for w in words.tolist()]
    assert popcount(words).tolist() == expected
    monkeypatch.delattr(np, "bitwise_count", raising=False)
    assert popcount(words).tolist() == expected


def test_phash64_matches_imagehash() -> None:
    import imagehash

    images = _patterns(3, seed=6)
    hashes = phash64(images)
    for img, value in zip(images, hashes.tolist()):
        assert f"{value:016x}" == str(imagehash.phash(Image.fromarray(img)))


# ---------------------------------------------------------------- subjects


def test_subject_in_two_splits_is_a_leak() -> None:
    rows = [
        _row("s1a", "A", subject="s1", split="train"),
        _row("s1b", "A", subject="s1", split="test"),
        _row("s2a", "B", subject="s2", split="train"),
        _row("s2b", "B", subject="s2", split="train"),
    ]
    report = audit_dataset(_manifest(rows), _patterns(4, seed=7))
    assert report.summary["subject_leaks"] == 1
    assert report.subject_leaks == [{"subject": "s1", "splits": ["test", "train"], "images": 2}]
    spread = report.summary["slices_per_subject"]
    assert spread["subjects"] == 2 and spread["min"] == 2 and spread["max"] == 2
    assert spread["subjects_per_class"] == {"A": 1, "B": 1}


def test_no_subject_ids_give_null_slices_per_subject() -> None:
    rows = [_row(f"i{i}", "AB"[i % 2]) for i in range(4)]
    s = audit_dataset(_manifest(rows), _patterns(4)).summary
    assert s["slices_per_subject"] is None and s["subject_leaks"] == 0


# ---------------------------------------------------------------- confounds


def _confound_rows(n: int, size_of: Callable[[int], tuple[int, int, str]]) -> list[ManifestRow]:
    """Image ``i`` has class A (even i) or B (odd i) and width, height, mode ``size_of(i)``."""
    rows = []
    for i in range(n):
        width, height, mode = size_of(i)
        rows.append(_row(f"i{i:03d}", "AB"[i % 2], width=width, height=height, mode=mode))
    return rows


def test_metadata_confound_is_flagged() -> None:
    rows = _confound_rows(60, lambda i: [(64, 64, "L"), (80, 80, "RGB")][i % 2])
    report = audit_dataset(_manifest(rows), _patterns(60, seed=8))
    c = report.summary["confound"]
    assert c["flag"] is True
    assert c["metadata_accuracy"] == 1.0 and c["majority_rate"] == 0.5
    assert set(c["features"]) == {"width", "height", "mode"}
    assert "acquisition" in c["reason"]


def test_identical_metadata_is_not_a_confound() -> None:
    rows = _confound_rows(60, lambda i: (64, 64, "L"))
    c = audit_dataset(_manifest(rows), _patterns(60, seed=9)).summary["confound"]
    assert c["flag"] is False and c["features"] == []
    assert c["metadata_accuracy"] <= c["majority_rate"]


def test_metadata_independent_of_class_is_not_a_confound() -> None:
    # three sizes, each holding exactly as many A as B images
    rows = _confound_rows(60, lambda i: [(64, 64, "L"), (72, 72, "L"), (96, 80, "L")][(i // 2) % 3])
    c = audit_dataset(_manifest(rows), _patterns(60, seed=10)).summary["confound"]
    assert c["flag"] is False
    assert c["lift"] < 0.1


def test_intensity_difference_is_reported_separately() -> None:
    images = _patterns(40, seed=11)
    images[1::2] = images[1::2] // 3  # class B is darker; metadata identical
    rows = _confound_rows(40, lambda i: (64, 64, "L"))
    c = audit_dataset(_manifest(rows), images).summary["confound"]
    assert c["flag"] is False
    assert c["intensity_flag"] is True and c["intensity_accuracy"] >= 0.9


def test_confound_folds_group_by_subject() -> None:
    # six subjects of four slices; class B subjects were scanned at another size
    rows = [
        _row(f"s{k}_{i}", "AB"[k % 2], subject=f"s{k}", width=64 + 16 * (k % 2)) for k in range(6) for i in range(4)
    ]
    c = audit_dataset(_manifest(rows), _patterns(24, seed=12)).summary["confound"]
    assert c["cv"].startswith("StratifiedGroupKFold") and "subject" in c["cv"]
    assert c["flag"] is True


def test_one_class_and_tiny_sets_do_not_crash() -> None:
    rows = [_row(f"i{i}", "only") for i in range(12)]
    report = audit_dataset(_manifest(rows), _patterns(12))
    c = report.summary["confound"]
    assert c["metadata_accuracy"] is None and c["flag"] is False and "one class" in c["reason"]
    assert report.summary["class_balance"]["imbalance_ratio"] == 1.0
    _dumps(report)

    tiny = audit_dataset(_manifest([_row("a", "A"), _row("b", "B")]), _patterns(2))
    assert tiny.summary["confound"]["metadata_accuracy"] is None and "too few" in tiny.summary["confound"]["reason"]

    empty = audit_dataset(_manifest([]), np.zeros((0, SIZE, SIZE), dtype=np.uint8))
    assert empty.summary["images"] == 0 and empty.summary["duplicate_groups"] == 0
    _dumps(empty)


# ---------------------------------------------------------------- output


def test_json_is_serialisable_capped_and_keeps_the_spec_keys() -> None:
    rows = [_row(f"d{i}", "AB"[i % 2], content=f"h{i // 2}", split=["train", "test"][i % 2]) for i in range(12)]
    images = np.repeat(_patterns(6, seed=13), 2, axis=0)
    report = audit_dataset(_manifest(rows), images)
    out = json.loads(json.dumps(report.to_json(cap=2, member_cap=1), allow_nan=False))
    spec_counts = ("duplicate_groups", "cross_split_duplicates", "cross_class_duplicates", "near_duplicate_groups")
    for key in (*spec_counts, "subject_leaks"):
        assert isinstance(out[key], int)
    assert {"metadata_accuracy", "majority_rate", "flag"} <= set(out["confound"])
    assert out["duplicate_groups"] == 6 and out["cross_class_duplicates"] == 6
    assert len(out["details"]["duplicate_groups"]) == 2 and out["details"]["cut"]["duplicate_groups"] == 4
    first = out["details"]["duplicate_groups"][0]
    assert first["size"] == 2 and len(first["keys"]) == 1 and first["members_cut"] == 1


def test_images_must_align_with_the_usable_rows() -> None:
    rows = [_row("a", "A"), _row("b", "B")]
    with pytest.raises(ValueError, match="aligned"):
        audit_dataset(_manifest(rows), _patterns(3))
    with pytest.raises(ValueError, match="uint8"):
        audit_dataset(_manifest(rows), _patterns(2).astype(np.float32))


def test_data_audit_cli_prints_and_stores_the_audit(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import json as _json

    from sqlalchemy import select
    from typer.testing import CliRunner

    from bad_files import png_bytes
    from cli import app
    from sslmri_core.store.schema import Audit
    from sslmri_core.store.writer import RunStore

    monkeypatch.setenv("SSLMRI_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "data"
    for cls, value in (("a", 30), ("b", 200)):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            (root / cls / f"img{i}.png").write_bytes(png_bytes(size=(40 + i, 30), value=value + i))
    (root / "b" / "copy.png").write_bytes((root / "a" / "img0.png").read_bytes())  # cross-class duplicate
    db = f"sqlite:///{tmp_path / 'r.db'}"
    result = CliRunner().invoke(app, ["data", "audit", str(root), "--json", "--db", db])
    assert result.exit_code == 0, result.stderr
    report = _json.loads(result.stdout.strip().splitlines()[-1])
    assert report["duplicate_groups"] == 1 and report["cross_class_duplicates"] == 1
    assert report["cross_split_duplicates"] == 0  # the image-level split keeps copies together
    assert {"confound", "subject_leaks", "near_duplicate_groups"} <= set(report)
    with RunStore(db).engine.connect() as conn:
        stored = conn.execute(select(Audit.summary)).scalar_one()
    assert stored["duplicate_groups"] == 1
