"""One stored scan decoded again exactly as training decoded it, from its manifest key.

Callers (the dashboard, reports) check first that the path lies inside an allowed root
(:func:`sslmri_core.paths.scan_file`); this module only decodes.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from sslmri_core.data.decode import DecodeError, decode_image_bytes, nifti_slices
from sslmri_core.data.dicom import decode_dicom_bytes
from sslmri_core.data.sources import file_kind

_SLICE_KEY = re.compile(r"^(?P<path>.+)#z=(?P<z>\d+)$")


def split_key(key: str) -> tuple[str, int | None]:
    """``"x.nii.gz#z=12"`` -> ``("x.nii.gz", 12)``; a plain path -> ``(path, None)``."""
    match = _SLICE_KEY.match(key)
    return (match["path"], int(match["z"])) if match else (key, None)


def read_scan(key: str, size: int, preprocess: str = "none") -> np.ndarray:
    """A manifest key (an image or DICOM path, ``path#z=k`` for a NIfTI slice or DICOM frame) decoded
    as training decodes it (with the run's ``preprocess``): uint8 ``(size, size)``; DecodeError with a
    one-line reason."""
    path, z = split_key(key)
    kind = file_kind(path)
    try:
        if kind == "nifti":
            slices, _ = nifti_slices(path, size, preprocess)
            found = dict(slices).get(z if z is not None else -1)
            if found is None:
                raise DecodeError(f"no usable axial slice {z} in {Path(path).name}" if z is not None else
                                  f"{Path(path).name} is a volume: name one slice as <path>#z=<k>")
            return found
        data = Path(path).read_bytes()
        if kind == "dicom":
            frames = dict(decode_dicom_bytes(data, size, preprocess).frames)
            if z not in frames:
                raise DecodeError(f"{Path(path).name} has no frame {z}" if z is not None else
                                  f"{Path(path).name} is a multi-frame DICOM: name one frame as <path>#z=<k>")
            return frames[z]
        if kind == "image" and z is None:
            return decode_image_bytes(data, size, suffix=Path(path).suffix, preprocess=preprocess)[0]
    except OSError as exc:
        raise DecodeError(f"cannot read {Path(path).name}: {exc.strerror or exc.__class__.__name__}") from None
    raise DecodeError(f"{Path(path).name}: not an image, NIfTI slice or DICOM file")
