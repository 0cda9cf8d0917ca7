"""64-bit perceptual hashes and their Hamming distances: ``phash64``, ``popcount``,
``hamming_pairs`` (all pairs within a distance) and ``max_hamming``."""

from __future__ import annotations

import imagehash
import numpy as np
from PIL import Image

_BLOCK = 512  # rows per XOR block: 512 x 6,000 uint64 = 24 MB


def phash64(images: np.ndarray) -> np.ndarray:
    """``imagehash.phash`` of each image as uint64 ``(N,)`` (bit 63 = the hash's first bit)."""
    out = np.zeros(len(images), dtype=np.uint64)
    for i, img in enumerate(images):
        bits = imagehash.phash(Image.fromarray(img)).hash.ravel()
        out[i] = np.packbits(bits).view(">u8")[0]
    return out


_POP8 = np.array([v.bit_count() for v in range(256)], dtype=np.uint8)


def popcount(words: np.ndarray) -> np.ndarray:
    """Set bits per uint64, same shape, uint8 (``np.bitwise_count`` from numpy 2.0; a byte table before)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(words)
    as_bytes = words.view(np.uint8).reshape(*words.shape, 8)
    return _POP8[as_bytes].sum(axis=-1, dtype=np.uint8)


def hamming_pairs(hashes: np.ndarray, threshold: int) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs ``i < j`` of uint64 ``hashes (U,)`` within ``threshold`` bits, as two int arrays."""
    found_i: list[np.ndarray] = []
    found_j: list[np.ndarray] = []
    for start in range(0, len(hashes), _BLOCK):
        block = hashes[start : start + _BLOCK]
        dist = popcount(block[:, None] ^ hashes[None, start:])  # only columns >= start: upper triangle
        i, j = np.nonzero(dist <= threshold)
        keep = j > i  # j is relative to `start`, as is i: drops the diagonal and the lower triangle
        found_i.append(i[keep] + start)
        found_j.append(j[keep] + start)
    if not found_i:
        return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp)
    return np.concatenate(found_i), np.concatenate(found_j)


def max_hamming(hashes: np.ndarray) -> int:
    """Largest pairwise Hamming distance among uint64 ``hashes (U,)`` (0 for fewer than two)."""
    best = 0
    for start in range(0, len(hashes), _BLOCK):
        block = hashes[start : start + _BLOCK]
        best = max(best, int(popcount(block[:, None] ^ hashes[None, :]).max(initial=0)))
    return best
