"""The SSL pretraining pool: which images it holds, which of them monitor the representation, its
fingerprint, loading it on every rank, and (for later runs) what a pretraining run's pool contained.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from sslmri_core.config import PretrainConfig
from sslmri_core.data.groups import ContentIndex
from sslmri_core.data.loading import ImageSet, concat_sets, load_folder
from sslmri_core.data.splits import split_for
from sslmri_core.paths import run_file
from sslmri_core.progress import console
from sslmri_core.train.distributed import FollowerStore, World, barrier
from sslmri_core.train.monitor import MonitorSet

if TYPE_CHECKING:
    from sslmri_core.store.writer import RunStore

POOL_CONTENT = "pool_content.npz"  # in the run folder: the SSL pool by content (see groups.ContentIndex)


def load_pretrain_data(cfg: PretrainConfig) -> tuple[ImageSet, list[str]]:
    """The pretraining pool and, per image found, its role: ``pool``, ``excluded`` (a --data folder's
    test split, and its val split with ``exclude_val``) or ``overlap`` (an ``--unlabeled`` image that
    copies a --data folder's val or test image).

    Without ``--data`` the pool is the built-in pretraining set (its subjects are never used for
    fine-tuning, so nothing needs excluding). With ``--data`` and ``exclude_test``, each folder's
    test images are left out: its given test split when it has one, else the 70/15/15 subject
    split drawn with ``split_seed`` (the split ``finetune`` uses by default).
    """
    data, roles, _ = load_pretrain_pool(cfg)
    return data, roles


def load_pretrain_pool(cfg: PretrainConfig) -> tuple[ImageSet, list[str], list[str]]:
    """As :func:`load_pretrain_data`, plus each image's split for monitoring: ``train``/``val``/``test`` in the
    labelled folders, ``unlabeled`` in the ``--unlabeled`` ones (never in the monitor's bank or queries)."""
    from sslmri_core.data.builtin import builtin_root

    roots = cfg.data or [str(builtin_root("pretrain"))]
    sets, roles, splits, held_out = [], [], [], []
    for root in roots:
        data = load_folder(root, cfg.image_size, cfg.subject_pattern, cfg.class_map, cfg.preprocess)
        # The very split fine-tuning draws with the same settings: its val/test groups stay out of the pool.
        split = split_for(data, cfg.split_seed, use_given=cfg.use_given_split, allow_leaky=cfg.allow_leaky_split,
                          folds=cfg.folds, fold=cfg.fold)
        names = split.assignment(len(data.items))
        role = ["pool"] * len(data.items)
        if cfg.data and cfg.exclude_test:
            for i in split.test:
                role[int(i)] = "excluded"
        if cfg.data and cfg.exclude_val:
            for i in split.val:
                role[int(i)] = "excluded"
        if cfg.data:
            assert data.thumbs is not None
            kept = np.sort(np.concatenate([split.val, split.test])).astype(np.int64)
            held_out.append(ContentIndex.build([data.items[int(i)].content_hash for i in kept], data.thumbs[kept]))
        sets.append(data)
        roles.extend(role)
        splits.extend(names)
    for root in cfg.unlabeled:
        extra = load_folder(root, cfg.image_size, cfg.subject_pattern, None, cfg.preprocess)
        assert extra.thumbs is not None
        # No task split without --data (the built-in pool's subjects are never fine-tuned on): nothing to copy.
        copies = ContentIndex.concat(held_out).matches(extra.hashes, extra.thumbs) if held_out \
            else np.zeros(len(extra.items), dtype=bool)
        sets.append(extra)
        roles.extend("overlap" if c else "pool" for c in copies.tolist())
        splits.extend(["unlabeled"] * len(extra.items))
    return concat_sets(sets), roles, splits


def load_pool_ranked(
    cfg: PretrainConfig, store: RunStore, world: World
) -> tuple[ImageSet, list[str], list[str], np.ndarray, RunStore]:
    """What :func:`load_pretrain_pool` finds (images, roles, splits), the pool's indices ``(P,)``, and the
    store this rank writes to.

    Rank 0 fills the image cache first and the other ranks then read it; a non-zero rank gets a
    :class:`FollowerStore` in place of ``store`` (only rank 0 writes).
    """
    if not world.main:
        barrier()
    found, roles, splits = load_pretrain_pool(cfg)
    if world.main:
        barrier()
    else:
        # It answers every RunStore method (writes dropped, reads passed on): typed as what it stands in for.
        store = cast("RunStore", FollowerStore(store))
    pool = np.array([i for i, r in enumerate(roles) if r == "pool"], dtype=np.int64)
    return found, roles, splits, pool, store


def pool_hash(items: list[Any], pool: np.ndarray) -> str:
    """Fingerprint of the pretraining pool in order: a resumed run must see the same images at the same indices."""
    return hashlib.sha256("\n".join(items[int(i)].key for i in pool).encode()).hexdigest()


def subject_ids(items: list[Any], pool: np.ndarray) -> np.ndarray:
    """int64 ``(P,)`` subject number of each pool image (for NT-Xent's same-subject mask); an image
    without a subject id is a subject of its own."""
    numbers: dict[object, int] = {}
    return np.array([numbers.setdefault(items[int(i)].subject if items[int(i)].subject is not None else ("#", j),
                                        len(numbers)) for j, i in enumerate(pool)], dtype=np.int64)


def monitor_set(found: ImageSet, pool: np.ndarray, splits: list[str], cfg: PretrainConfig) -> MonitorSet | None:
    """kNN bank (train split) and queries (val split) inside the pool, capped, in a seeded order (a smaller
    pass takes a prefix); None without 2+ classes. Only the --data folders' classes count: ``--unlabeled``
    images get label -1 and are never in the bank or the queries."""
    task = sorted({found.items[i].label for i, name in enumerate(splits) if name != "unlabeled"})
    if not cfg.monitor or len(task) < 2:
        return None
    number = {c: i for i, c in enumerate(task)}
    every = np.array([number[it.label] if name != "unlabeled" else -1
                      for it, name in zip(found.items, splits, strict=True)], dtype=np.int64)
    labels = every[pool]
    names = np.array([splits[int(i)] for i in pool])
    picker = np.random.RandomState(cfg.split_seed)  # its own generator: training's random streams stay untouched
    bank = np.flatnonzero(names == "train")
    if cfg.exclude_val and cfg.data:  # val is outside the pool: its images are the queries
        outside = np.array([i for i, name in enumerate(splits) if name == "val"], dtype=np.int64)
        if len(bank) < 2 or len(outside) < 1:
            return None
        bank = picker.permutation(bank)[: cfg.knn_bank]
        outside = picker.permutation(outside)[: cfg.knn_queries]
        return MonitorSet(labels, bank, np.empty(0, dtype=np.int64), len(task),
                          query_images=found.images[outside], query_labels=every[outside])
    queries = np.flatnonzero(names == "val")
    if len(bank) < 2 or len(queries) < 1:
        return None
    bank = picker.permutation(bank)[: cfg.knn_bank]
    queries = picker.permutation(queries)[: cfg.knn_queries]
    return MonitorSet(labels, bank, queries, len(task))


def pool_index(store: RunStore, run_id: int) -> ContentIndex:
    """The content of pretraining run ``run_id``'s pool: from its run folder, else (older runs, a
    moved folder) the file hashes kept in the store, which find exact copies only."""
    record = store.get_run(run_id)
    if record.out_dir and (Path(record.out_dir) / POOL_CONTENT).is_file():
        return ContentIndex.load(run_file(Path(record.out_dir) / POOL_CONTENT, record.out_dir, "SSL pool content"))
    hashes = [h for _, split, h, _ in store.split_content(run_id) if split == "pool" and h]
    console.print(f"note: run {run_id} has no {POOL_CONTENT}: its SSL pool is compared by file hash only "
                  "(near copies are not found)")
    return ContentIndex.hashes_only(hashes)
