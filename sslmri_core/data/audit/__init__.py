"""Data-set audit: duplicates, near-duplicates, subject leaks, acquisition confounds, balance.

Public API: :func:`audit_dataset` and :class:`AuditReport` (defined in :mod:`.report`, which
also documents the splits and the output). The checks, each module documenting its rule:
``duplicates`` (exact and near-duplicate groups), ``near`` (the near-duplicate rule
:func:`~.near.near_links`, which the split's content groups share), ``hashing`` (64-bit pHash
and Hamming distances), ``balance`` (subject leaks, class balance, slices per subject) and
``confound`` (acquisition confound). Import their names from those modules.
"""

from __future__ import annotations

from .report import AuditReport, audit_dataset

__all__ = ["AuditReport", "audit_dataset"]
