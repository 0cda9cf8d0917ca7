"""Finding the images under a data folder: class folders at any depth, given split folders,
subject ids in file names, NIfTI volumes, and every file that cannot be used.

Rules (also in the README):

* the folder that directly contains an image names its class (``tumor/Training/glioma/x.jpg`` is
  a glioma, ``ms/FLAIR/lesion/y.png`` a lesion); a class map can rename or merge classes;
* an ancestor folder named ``Training``/``train``, ``Testing``/``test`` or ``Validation``/``val``
  (any case) gives the file's *given* split;
* ``X_mask.png`` beside ``X.png`` is X's lesion mask, not an image;
* a DICOM file may have any name: a ``.dcm``/``.dicom`` suffix or the ``DICM`` marker at byte 128
  makes it one (see :mod:`sslmri_core.data.dicom`);
* hidden files (``.name``) and sslmri's own ``synth.json`` are not data; every other file is
  either an image or listed as unusable with its reason.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from sslmri_core.data.dicom import is_dicom_file
from sslmri_core.errors import UsageError

IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
NIFTI_SUFFIXES = (".nii", ".nii.gz")
MASK_SUFFIX = "_mask"
OWN_METADATA = frozenset({"synth.json"})
GIVEN_SPLITS = {
    "training": "train", "train": "train",
    "testing": "test", "test": "test",
    "validation": "val", "val": "val", "valid": "val",
}
# Named subject-id patterns of the layouts we know (group 1 is the id).
SUBJECT_PATTERNS: dict[str, str] = {
    "bids": r"(sub-[A-Za-z0-9]+)",
    "oasis": r"(OAS\d_\d{4})",
    "patient": r"(patient\d+)",
}


class DataError(UsageError):
    """A data folder cannot be used (missing, empty, or nothing usable in it)."""


@dataclass(frozen=True)
class SourceFile:
    """A candidate image file (or NIfTI volume) and what its place in the tree says about it."""

    path: str
    rel_path: str
    folder_label: str
    given_split: str | None
    kind: str  # "image" | "nifti" | "dicom"
    mask_path: str | None = None


@dataclass
class Discovery:
    """What a walk of the data folder found."""

    files: list[SourceFile]
    unusable: list[tuple[str, str]]  # (path, reason) of files that are not images or cannot be read
    notes: list[str]


def is_nifti(name: str) -> bool:
    return name.lower().endswith(NIFTI_SUFFIXES)


def file_kind(path: str | Path) -> str | None:
    """``"nifti"``, ``"image"`` or ``"dicom"`` (by name, else by the DICOM marker), None for any other file."""
    name = Path(path).name
    if is_nifti(name):
        return "nifti"
    if os.path.splitext(name)[1].lower() in IMAGE_EXTS:
        return "image"
    return "dicom" if is_dicom_file(path) else None


def slice_position(path: str, slice_index: int | None, header: float | None = None) -> float | None:
    """Where an image lies along its slice axis (to order a subject's slices), the one rule for all files.

    A DICOM header's position (along the slice normal, else its InstanceNumber) wins; else a volume
    slice's or frame's index; else the last integer in the file name's stem (``slice_012.png`` -> 12.0);
    else None.
    """
    if header is not None:
        return float(header)
    if slice_index is not None:
        return float(slice_index)
    numbers = re.findall(r"\d+", Path(path).stem)
    return float(numbers[-1]) if numbers else None


def _given_split(rel_parts: tuple[str, ...]) -> str | None:
    for part in rel_parts[:-1]:
        split = GIVEN_SPLITS.get(part.lower())
        if split:
            return split
    return None


def _link_problem(path: Path, root: Path) -> str | None:
    """Why a symbolic link cannot be used, or None for a working link to a file inside ``root``.

    One rule for training and the dashboard: a file is read only where it really lies inside the
    data folder, so a link in a data folder cannot pull in a file from elsewhere on the host.
    """
    try:
        target = path.resolve(strict=True)
    except RuntimeError:
        return "symbolic link loop"
    except OSError as exc:
        return "symbolic link loop" if "loop" in str(exc).lower() else "broken symbolic link"
    if target.is_dir():
        return "symbolic link to a folder (not followed, to avoid loops)"
    if not target.is_relative_to(root.resolve()):
        return "symbolic link to a file outside the data folder (not followed)"
    return None


def discover(root: str | Path) -> Discovery:
    """Walk ``root`` (symlinked folders are not followed) and sort every file into candidates or unusable."""
    root = Path(root)
    files: list[SourceFile] = []
    unusable: list[tuple[str, str]] = []
    notes: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False, onerror=lambda e: unusable.append(
            (str(e.filename), f"folder cannot be read: {e.strerror}"))):
        folder = Path(dirpath)
        dirnames.sort()
        visible = sorted(f for f in filenames if not f.startswith("."))
        for name in list(dirnames):
            if (folder / name).is_symlink():
                unusable.append((str(folder / name), "symbolic link to a folder (not followed, to avoid loops)"))
        if folder != root and not visible and not dirnames:
            notes.append(f"empty class folder: {folder}")
        names = set(visible)
        for name in visible:
            _sort_file(root, folder, name, names, files, unusable)
    return Discovery(files, unusable, notes)


def _sort_file(
    root: Path, folder: Path, name: str, names: set[str], files: list[SourceFile], unusable: list[tuple[str, str]]
) -> None:
    path = folder / name
    if name in OWN_METADATA:
        return
    if path.is_symlink():
        problem = _link_problem(path, root)
        if problem:
            unusable.append((str(path), problem))
            return
    stem, ext = os.path.splitext(name)
    if stem.endswith(MASK_SUFFIX) and stem[: -len(MASK_SUFFIX)] + ext in names:
        return  # a lesion mask, attached to its image below
    kind = file_kind(path)
    if kind is None:
        unusable.append((str(path), f"not an image file type ({ext or 'no extension'})"))
        return
    if folder == root:
        unusable.append((str(path), "image directly in the data folder: put it in a folder named after its class"))
        return
    mask = stem + MASK_SUFFIX + ext
    rel = path.relative_to(root)
    files.append(SourceFile(
        path=str(path.absolute()), rel_path=rel.as_posix(), folder_label=folder.name,
        given_split=_given_split(rel.parts), kind=kind,
        mask_path=str((folder / mask).absolute()) if mask in names else None,
    ))


def subject_regex(pattern: str | None, names: list[str]) -> tuple[str | None, str | None]:
    """``(label, regex)`` for subject ids: the user's regex, else the named pattern matching most names."""
    if pattern:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"--subject-pattern is not a valid regular expression: {exc}") from exc
        return pattern, pattern
    hits = Counter({key: sum(bool(re.search(rx, n)) for n in names) for key, rx in SUBJECT_PATTERNS.items()})
    best, count = hits.most_common(1)[0] if hits else (None, 0)
    return (best, SUBJECT_PATTERNS[best]) if best and count else (None, None)


def parse_subject(name: str, regex: str | None) -> str | None:
    """The subject id in a file name (group 1 of ``regex``, or its whole match)."""
    if not regex:
        return None
    match = re.search(regex, name)
    if not match:
        return None
    return match.group(1) if match.groups() else match.group(0)


def parse_class_map(text: str | None) -> dict[str, str]:
    """``"glioma=tumour,meningioma=tumour"`` -> ``{"glioma": "tumour", "meningioma": "tumour"}``."""
    if not text:
        return {}
    mapping: dict[str, str] = {}
    for part in text.split(","):
        old, sep, new = part.partition("=")
        if not sep or not old.strip() or not new.strip():
            raise ValueError(f"--class-map entries look like old=new, got {part!r}")
        mapping[old.strip()] = new.strip()
    return mapping
