"""The manifest: one row per image (or NIfTI slice) found under a data folder.

Each row says where the image is, its class, subject and given split (when the folder has
``Training/``+``Testing/``-style split folders), its content hash and header facts, and whether
it can be used. A file that cannot be used gets a row with ``status="unusable"`` and the reason:
nothing the user pointed at disappears silently.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import pandas as pd

OK = "ok"
UNUSABLE = "unusable"


@dataclass(frozen=True)
class ManifestRow:
    """One image, or one axial slice of a NIfTI volume (``slice_index`` set)."""

    path: str  # absolute file path
    rel_path: str  # relative to the data folder
    label: str  # class after any renaming / merging
    folder_label: str  # the class folder's own name
    subject: str | None
    given_split: str | None  # train | val | test when the folder layout defines it
    content_hash: str | None  # of the file's bytes (the volume's, for NIfTI slices)
    file_size: int | None
    width: int | None
    height: int | None
    mode: str | None  # PIL mode (L, RGB, I;16, ...) or "nifti:<dtype>"
    bit_depth: int | None
    slice_index: int | None = None
    status: str = OK
    reason: str | None = None
    mask_path: str | None = None  # the lesion mask saved beside the image, when there is one
    # Where the slice lies along the slice axis, to order a subject's slices: DICOM, the position along
    # the slice normal (else InstanceNumber); NIfTI, the slice index; an image file, the last number in its name.
    position: float | None = None
    series: str | None = None  # DICOM: salted hash of SeriesInstanceUID (slices of one series share it)

    @property
    def key(self) -> str:
        """Unique id of the image: the path, plus ``#z=<k>`` for a NIfTI slice."""
        return self.path if self.slice_index is None else f"{self.path}#z={self.slice_index}"

    @property
    def usable(self) -> bool:
        return self.status == OK


@dataclass
class Manifest:
    """Every row found under ``root``; ``notes`` carries folder-level findings (e.g. empty class folders)."""

    root: str
    rows: list[ManifestRow]
    subject_pattern: str | None  # the named pattern or regex that gave subject ids, None when none did
    notes: list[str] = field(default_factory=list)

    @property
    def usable(self) -> list[ManifestRow]:
        return [r for r in self.rows if r.usable]

    @property
    def unusable(self) -> list[ManifestRow]:
        return [r for r in self.rows if not r.usable]

    @property
    def classes(self) -> list[str]:
        return sorted({r.label for r in self.usable})

    @property
    def split_level(self) -> str:
        """``subject`` when every usable image has a subject id, else ``image`` (leakage-prone)."""
        usable = self.usable
        return "subject" if usable and all(r.subject for r in usable) else "image"

    @property
    def has_given_split(self) -> bool:
        return any(r.given_split for r in self.usable)

    def files(self) -> list[str]:
        """Distinct files (a NIfTI volume counts once)."""
        return sorted({r.path for r in self.rows})

    def fingerprint(self) -> str:
        """Stable id of the data set's content: paths relative to the root, labels and hashes (and, for
        DICOM rows, the salted subject id: another salt regroups the subjects, so it is another data set)."""
        digest = hashlib.sha256()
        for r in sorted(self.usable, key=lambda r: (r.rel_path, r.slice_index or -1)):
            # a DICOM row (mode "dicom:..."); other rows keep the fingerprint they always had
            salted = f"\0{r.subject}" if (r.mode or "").startswith("dicom:") else ""
            digest.update(f"{r.rel_path}\0{r.slice_index}\0{r.label}\0{r.content_hash}{salted}\n".encode())
        return digest.hexdigest()[:16]

    def check_summary(self) -> dict[str, object]:
        """The ``data check`` report: per file, used or listed with its reason (``files == usable + unusable``)."""
        bad_files = {r.path: r.reason for r in self.unusable}
        used_files = {r.path for r in self.usable} - set(bad_files)
        subjects = {r.subject for r in self.usable if r.subject}
        return {
            "root": self.root,
            "files": len(used_files) + len(bad_files),
            "usable": len(used_files),
            "unusable": [{"path": p, "reason": why} for p, why in sorted(bad_files.items())],
            "images": len(self.usable),
            "classes": dict(sorted(Counter(r.label for r in self.usable).items())),
            "subjects": len(subjects) if self.split_level == "subject" else None,
            "subject_pattern": self.subject_pattern,
            "split_level": self.split_level,
            "given_split": dict(sorted(Counter(r.given_split for r in self.usable if r.given_split).items())) or None,
            "fingerprint": self.fingerprint(),
            "notes": self.notes,
        }

    def to_frame(self) -> pd.DataFrame:
        """One row per manifest row, columns as in :class:`ManifestRow` plus ``key``."""
        frame = pd.DataFrame([asdict(r) for r in self.rows], columns=[f.name for f in fields(ManifestRow)])
        frame.insert(0, "key", [r.key for r in self.rows])
        return frame

    def export(self, path: str | Path) -> Path:
        """Write the manifest as CSV or Parquet (by the file extension)."""
        path = Path(path)
        frame = self.to_frame()
        if path.suffix.lower() == ".parquet":
            frame.to_parquet(path, index=False)
        elif path.suffix.lower() == ".csv":
            frame.to_csv(path, index=False)
        else:
            raise ValueError(f"--export must end in .csv or .parquet, got {path.name}")
        return path
