"""Build a data folder's manifest and its decoded images, through the cache.

First build: every file is read once, hashed, decoded at the training size and stored in the
content-addressed cache (in worker processes). Later builds only stat the files: unchanged ones
come from the cache index without being opened, changed ones are decoded again.

DICOM files add three facts to the cache: the salted hashes of their PatientID (``dicom_subject``)
and SeriesInstanceUID (``series``), and ``salt_id``, the salt's fingerprint: when the salt changes,
those files are decoded again (the raw identifiers are never kept).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from sslmri_core.data.cache import ImageCache, default_root, stat_file
from sslmri_core.data.decode import DecodeError, decode_image_bytes, nifti_slices
from sslmri_core.data.dicom import decode_dicom_bytes, salt_id
from sslmri_core.data.manifest import OK, UNUSABLE, Manifest, ManifestRow
from sslmri_core.data.sources import DataError, SourceFile, discover, parse_subject, slice_position, subject_regex

INLINE_BELOW = 64  # fewer files than this are decoded in-process: starting workers costs more
DICOM_SUBJECTS = "dicom-patient-id"  # the manifest's subject_pattern when DICOM headers gave subject ids
ROW_FACTS = frozenset(f.name for f in fields(ManifestRow)) - {"subject", "position"}


def _hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _facts(content_hash: str | None, nbytes: int | None, **values: Any) -> dict[str, Any]:
    base = {"content_hash": content_hash, "file_size": nbytes, "width": None, "height": None, "mode": None,
            "bit_depth": None, "slice_index": None, "status": OK, "reason": None}
    return {**base, **values}


Decoded = tuple[list[dict[str, Any]], list[tuple[str, int | None, bytes]]]
WORKER_DIED = "the decoder process died on this file (out of memory or a crash)"


Job = tuple[str, str, int, str]  # path, kind, size, preprocess


def process_file(job: Job) -> Decoded:
    """Read, hash and decode one file: one facts dict per image it holds, and the arrays' bytes.

    Runs in worker processes: takes and returns plain data only.
    """
    path, kind, size, preprocess = job
    try:
        data = Path(path).read_bytes()
    except PermissionError:
        return [_facts(None, None, status=UNUSABLE, reason="cannot read: permission denied")], []
    except OSError as exc:
        return [_facts(None, None, status=UNUSABLE, reason=f"cannot read: {exc.strerror or exc}")], []
    digest = _hash(data)
    try:
        if kind == "nifti":
            slices, facts = nifti_slices(path, size, preprocess)
            rows = [_facts(digest, len(data), width=facts.width, height=facts.height, mode=facts.mode,
                           bit_depth=facts.bit_depth, slice_index=z) for z, _ in slices]
            return rows, [(digest, z, array.tobytes()) for z, array in slices]
        if kind == "dicom":
            scan = decode_dicom_bytes(data, size, preprocess)
            f = scan.facts
            rows = [_facts(digest, len(data), width=f.width, height=f.height, mode=f.mode, bit_depth=f.bit_depth,
                           slice_index=k, position=pos, series=scan.series, dicom_subject=scan.subject,
                           salt_id=scan.salt_id) for (k, _), pos in zip(scan.frames, scan.positions, strict=True)]
            return rows, [(digest, k, array.tobytes()) for k, array in scan.frames]
        array, facts = decode_image_bytes(data, size, suffix=Path(path).suffix, preprocess=preprocess)
    except DecodeError as exc:
        return [_facts(digest, len(data), status=UNUSABLE, reason=str(exc))], []
    except Exception as exc:  # a decoder bug must still become a reported reason, not a crash
        # A DICOM exception's text could quote a header value: its class only.
        reason = f"cannot decode: {exc.__class__.__name__}" + ("" if kind == "dicom" else f": {exc}")
        return [_facts(digest, len(data), status=UNUSABLE, reason=reason)], []
    row = _facts(digest, len(data), width=facts.width, height=facts.height, mode=facts.mode, bit_depth=facts.bit_depth)
    return [row], [(digest, None, array.tobytes())]


def _mp_context() -> multiprocessing.context.BaseContext:
    """fork where there is one: workers start in milliseconds and need no importable ``__main__``.

    Safe here because workers only run PIL / NumPy / nibabel code, never torch or CUDA.
    """
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def _decode_all(jobs: list[Job], workers: int,
                progress: Callable[[int, int], None] | None) -> list[Decoded]:
    results: list[Decoded] = []
    if len(jobs) < INLINE_BELOW or workers <= 1:
        for i, job in enumerate(jobs):
            results.append(process_file(job))
            if progress:
                progress(i + 1, len(jobs))
        return results
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=_mp_context()) as pool:
            for result in pool.map(process_file, jobs, chunksize=32):
                results.append(result)
                if progress:
                    progress(len(results), len(jobs))
    except BrokenProcessPool:
        # A worker died (killed for memory, a decoder crash): the command goes on. The files not yet
        # decoded are decoded again one process each, so only the one that kills its process is lost.
        for job in jobs[len(results):]:
            results.append(_isolated(job))
            if progress:
                progress(len(results), len(jobs))
    return results


def _isolated(job: Job) -> Decoded:
    """:func:`process_file` in a process of its own: its death makes this one file unusable."""
    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=_mp_context()) as pool:
            return pool.submit(process_file, job).result()
    except BrokenProcessPool:
        return [_facts(None, None, status=UNUSABLE, reason=WORKER_DIED)], []


def _row(src: SourceFile, facts: dict[str, Any], label: str, subject: str | None) -> ManifestRow:
    """A usable (or unusable) row; a DICOM file's hashed PatientID wins over the file-name subject."""
    known = {k: v for k, v in facts.items() if k in ROW_FACTS}
    position = slice_position(src.path, facts["slice_index"], facts.get("position"))
    return ManifestRow(path=src.path, rel_path=src.rel_path, label=label, folder_label=src.folder_label,
                       subject=facts.get("dicom_subject") or subject, given_split=src.given_split,
                       mask_path=src.mask_path, position=position, **known)


def _series_in_order(rows: list[ManifestRow]) -> list[ManifestRow]:
    """Rows of one DICOM series (in one folder) together, in position order, where its first file was."""
    groups: dict[tuple[str, str], list[ManifestRow]] = {}
    for r in rows:
        if r.series is not None:
            groups.setdefault((str(Path(r.path).parent), r.series), []).append(r)
    out: list[ManifestRow] = []
    for r in rows:
        group = groups.pop((str(Path(r.path).parent), r.series), None) if r.series is not None else [r]
        if group:  # None: the series was placed at its first row already
            out.extend(sorted(group, key=lambda g: (g.position is None, g.position or 0.0)))  # stable
    return out


def _fresh(facts: list[dict[str, Any]], salt: str | None) -> bool:
    """Whether cached facts still stand: hashes made with another salt do not."""
    return all(f.get("salt_id") in (None, salt) for f in facts)


def _unusable_row(root: Path, path: str, reason: str) -> ManifestRow:
    p = Path(path)
    try:
        rel = p.relative_to(root).as_posix()
    except ValueError:
        rel = path
    return ManifestRow(path=path, rel_path=rel, label="", folder_label=p.parent.name, subject=None, given_split=None,
                       content_hash=None, file_size=None, width=None, height=None, mode=None, bit_depth=None,
                       status=UNUSABLE, reason=reason)


def build_manifest(
    root: str | Path,
    size: int = 128,
    subject_pattern: str | None = None,
    class_map: dict[str, str] | None = None,
    *,
    workers: int | None = None,
    cache_root: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    preprocess: str = "none",
) -> tuple[Manifest, np.ndarray]:
    """Manifest of ``root`` and its usable images, uint8 ``(N, size, size)`` in ``manifest.usable`` order,
    each decoded with ``preprocess`` (:func:`sslmri_core.data.head.prepare`)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    found = discover(root)
    pattern_label, regex = subject_regex(subject_pattern, [Path(f.path).name for f in found.files])
    class_map = class_map or {}

    stats = {f.path: stat_file(f.path) for f in found.files}
    cache = ImageCache(cache_root or default_root())
    try:
        facts_of = cache.known_files([s for s in stats.values() if s is not None], size, preprocess)
        salt = salt_id() if any(f.kind == "dicom" for f in found.files) else None  # made once, before the workers
        facts_of = {path: facts for path, facts in facts_of.items() if _fresh(facts, salt)}
        todo = [f for f in found.files if stats[f.path] is not None and f.path not in facts_of]
        results = _decode_all([(f.path, f.kind, size, preprocess) for f in todo],
                              workers or min(os.cpu_count() or 2, 8), progress)
        facts_of.update({src.path: facts for src, (facts, _) in zip(todo, results, strict=False)})
        # A file whose decoder died is not cached as unusable: next time it is tried again.
        cache.store(size, [(stats[src.path], facts) for src, (facts, _) in zip(todo, results, strict=False)  # type: ignore[misc]
                           if facts[0]["reason"] != WORKER_DIED],
                    [a for _, arrays in results for a in arrays], preprocess)

        rows: list[ManifestRow] = []
        for src in found.files:
            if stats[src.path] is None:
                rows.append(_unusable_row(root, src.path, "cannot read: file vanished or cannot be stat'ed"))
                continue
            label = class_map.get(src.folder_label, src.folder_label)
            subject = parse_subject(Path(src.path).name, regex)
            rows.extend(_row(src, facts, label, subject) for facts in facts_of[src.path])
        rows = _series_in_order(rows)
        rows.extend(_unusable_row(root, path, reason) for path, reason in found.unusable)
        if any(f.get("dicom_subject") for facts in facts_of.values() for f in facts):
            pattern_label = f"{pattern_label}+{DICOM_SUBJECTS}" if pattern_label else DICOM_SUBJECTS
        manifest = Manifest(str(root), rows, pattern_label, found.notes)
        images = cache.read(size, [(r.content_hash or "", r.slice_index) for r in manifest.usable], preprocess)
    finally:
        cache.close()
    return manifest, images
