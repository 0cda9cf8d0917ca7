"""2-D maps of a run's encoder features (UMAP or t-SNE), stored for the dashboard's Embeddings page.

``embed_run`` loads a pretrain or finetune run's checkpoint (weights only, from the run's own
output folder), rebuilds the run's data from its stored config, encodes every image without
augmentation and projects the features to 2-D. Rows go to the ``embeddings`` table with the
scan path, subject, class, split (the run's own split assignment: ``train/val/test`` for
fine-tuning, ``pool/excluded`` for pretraining) and source folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sslmri_core.config import EMBED_METHODS as METHODS
from sslmri_core.data.loading import ImageSet
from sslmri_core.store.status import RunRecord
from sslmri_core.store.writer import RunStore

if TYPE_CHECKING:
    from torch import nn

MIN_IMAGES = 5  # fewer points than this make neither UMAP nor t-SNE meaningful
DEFAULT_MAX_IMAGES = 5000  # t-SNE and UMAP stay under a minute on 2 cores up to about here


@dataclass(frozen=True)
class EmbedResult:
    run_id: int
    method: str
    n_points: int
    n_features: int
    splits: dict[str, int]


def _run_data(run: RunRecord, store: RunStore) -> tuple[ImageSet, list[str], str]:
    """The run's images, each image's split, and the model name (from the stored config)."""
    from sslmri_core.config import FinetuneConfig, PretrainConfig, from_dict

    if run.kind == "pretrain":
        from sslmri_core.train.pool import load_pretrain_data

        pre = from_dict(PretrainConfig, run.config)
        data, roles = load_pretrain_data(pre)
        return data, roles, pre.model
    from sslmri_core.train.finetune import load_finetune_data

    cfg = from_dict(FinetuneConfig, run.config)
    data = load_finetune_data(cfg)
    split_of = store.split_of(run.id)
    return data, [split_of.get(it.key, "unassigned") for it in data.items], cfg.model


def encode_images(encoder: nn.Module, images: np.ndarray) -> np.ndarray:
    """Encoder features of uint8 images ``(N, S, S)``: float32 ``(N, D)``, eval mode, no augmentation, on the CPU."""
    import torch

    from sslmri_core.train.predict import encode

    return encode(encoder, torch.from_numpy(images), torch.device("cpu"), "fp32").numpy()


def project(features: np.ndarray, method: str, seed: int = 0) -> np.ndarray:
    """``(N, D)`` features -> ``(N, 2)`` coordinates by UMAP (umap-learn) or t-SNE (scikit-learn)."""
    n = len(features)
    if n < MIN_IMAGES:
        raise ValueError(f"need at least {MIN_IMAGES} images to embed, got {n}")
    # Standardise: encoder features of an untrained or briefly trained net have wildly different scales.
    x = (features - features.mean(0)) / (features.std(0) + 1e-6)
    if method == "umap":
        import warnings

        import umap

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "n_jobs overridden by random_state" and numba chatter
            reducer = umap.UMAP(n_components=2, n_neighbors=min(15, n - 1), random_state=seed, init="random")
            return np.asarray(reducer.fit_transform(x), dtype=np.float64)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, max(2.0, (n - 1) / 3)))
        return np.asarray(TSNE(2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(x), np.float64)
    raise ValueError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")


def _source(row: Any) -> str:
    """The folder an image came from, relative to its data folder (``Training/glioma``)."""
    parent = Path(row.rel_path).parent.as_posix()
    return parent if parent != "." else Path(row.path).parent.name


def embed_run(
    store: RunStore, run_id: int, method: str = "umap", split: str = "all", *,
    max_images: int = DEFAULT_MAX_IMAGES, seed: int = 0,
) -> EmbedResult:
    """Encode a run's images with its checkpoint, project to 2-D and store the map (replacing an older one)."""
    from sslmri_core.train.checkpoints import checkpoint_of, encoder_from, encoder_state

    if method not in METHODS:
        raise ValueError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if max_images < MIN_IMAGES:
        raise ValueError(f"--max-images must be at least {MIN_IMAGES}, got {max_images}")
    ckpt = checkpoint_of(store, run_id, kinds=("pretrain", "finetune"), use="embed a pretrain or finetune run")
    encoder_state(ckpt)  # no encoder weights in it: say so before the data is read
    run = ckpt.record
    data, splits, model_name = _run_data(run, store)
    keep = np.arange(len(data.items)) if split == "all" else np.array(
        [i for i, s in enumerate(splits) if s == split], dtype=np.int64)
    if len(keep) == 0:
        found = ", ".join(sorted(set(splits))) or "none"
        raise ValueError(f"--split {split}: run {run_id} has no images in that split (it has: {found}, or all)")
    if len(keep) > max_images:  # a fixed, seeded subsample: the same points every time
        keep = np.sort(np.random.default_rng(seed).choice(keep, max_images, replace=False))
    features = encode_images(encoder_from(ckpt, model_name), data.images[keep])
    xy = project(features, method, seed)
    rows = [
        {"scan": data.items[i].key, "subject": data.items[i].subject, "label": data.items[i].label,
         "split": splits[i], "source": _source(data.items[i]), "x": float(x), "y": float(y)}
        for i, (x, y) in zip(keep.tolist(), xy, strict=True)
    ]
    store.log_embeddings(run_id, method, rows)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["split"]] = counts.get(r["split"], 0) + 1
    return EmbedResult(run_id, method, len(rows), int(features.shape[1]), counts)
