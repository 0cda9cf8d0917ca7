"""Built-in realistic synthetic brain MRI: 2D T1-weighted axial slices with placed ground truth.

Every synthetic subject is the MNI152 2009a template (shipped inside nilearn, so it loads
offline) seen through a random smooth deformation, random tissue contrasts, a synthetic skull and
scalp, a multiplicative bias field and Rician noise. Pathology is painted at anatomically
plausible places and each slice's lesion mask is saved beside it (used later to check where
Grad-CAM looks). Contrast is T1-weighted, post-contrast-like for tumours (enhancing rim,
bright meningioma and pituitary mass); MS lesions are T1-*hypointense* ("black holes"), the
oedema around a glioma is hypointense too.

Public API: :func:`generate`, :func:`check_out` and :class:`SynthSummary` (defined in :mod:`.writer`). The
modules: ``template`` (the MNI152 canvas and per-slice anatomy), ``primitives`` (drawing
helpers), ``phantom`` (the healthy head), ``lesion`` (the lesion interface), one module per
task (``tumour``, ``alzheimer``, ``parkinsons``, ``ms``), ``subject``, ``render`` and ``writer``.

Layout written by :func:`generate`::

    OUT/<task>/<class>/sub-<task>s<seed>c<class>n<NNNN>_slice-<zzz>.png   (size x size, mode L)
    OUT/<task>/<class>/sub-<task>s<seed>c<class>n<NNNN>_slice-<zzz>_mask.png   (0 / 255, empty when healthy)
    OUT/<task>/synth.json                                       (config + per-subject truth)

``zzz`` is the slice's index along the template's z axis. An existing ``OUT/<task>`` is replaced
only when ``data synth`` wrote it and it holds nothing synth.json does not list.
"""

from __future__ import annotations

from .writer import SynthSummary, check_out, generate

__all__ = ["SynthSummary", "check_out", "generate"]
