"""NT-Xent against a slow transcription of the SimCLR paper's formula and its closed form, and its
same-subject mask (one process and two)."""

import math
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sslmri_core.train.losses import nt_xent


def slow_nt_xent(z1: torch.Tensor, z2: torch.Tensor, t: float, groups: list[int] | None = None) -> float:
    """Eq. (1) of Chen et al. 2020, summed over all 2N anchors, one loop at a time; with ``groups``
    (one id per image) the views of other images of the anchor's group are left out of the denominator."""
    z = [F.normalize(v, dim=0) for v in torch.cat([z1, z2])]
    n2 = len(z)
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        j = (i + n) % n2
        num = math.exp(float(z[i] @ z[j]) / t)
        den = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(n2)
                  if k != i and (k == j or groups is None or groups[k % n] != groups[i % n]))
        total += -math.log(num / den)
    return total / n2


@pytest.mark.parametrize("t", [0.1, 0.5, 1.0])
def test_matches_slow_reference(t: float) -> None:
    torch.manual_seed(0)
    z1, z2 = torch.randn(6, 8, dtype=torch.float64), torch.randn(6, 8, dtype=torch.float64)
    assert nt_xent(z1, z2, t).item() == pytest.approx(slow_nt_xent(z1, z2, t), rel=1e-5)


def test_perfectly_aligned_orthogonal_pairs_give_closed_form() -> None:
    # Positives identical, negatives orthogonal: at t=1 every term is -log(e / (e + 2N-2)).
    n = 4
    z = torch.eye(n)
    expected = -math.log(math.e / (math.e + 2 * n - 2))
    assert nt_xent(z, z.clone(), 1.0).item() == pytest.approx(expected, rel=1e-6)


def test_identical_everything_gives_log_2n_minus_1() -> None:
    # All 2N views identical: every similarity equals the positive's, loss = log(2N - 1).
    n = 5
    z = torch.ones(n, 3)
    assert nt_xent(z, z.clone(), 1.0).item() == pytest.approx(math.log(2 * n - 1), rel=1e-6)


def test_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError):
        nt_xent(torch.randn(4, 8), torch.randn(3, 8))


def test_same_subject_mask_matches_the_hand_computation() -> None:
    # Caught bug: the mask misses the second view block (k >= N) or removes the positive.
    torch.manual_seed(1)
    z1, z2 = torch.randn(6, 8, dtype=torch.float64), torch.randn(6, 8, dtype=torch.float64)
    groups = [0, 1, 0, 2, 1, 0]
    masked = nt_xent(z1, z2, 0.3, groups=torch.tensor(groups))
    assert masked.item() == pytest.approx(slow_nt_xent(z1, z2, 0.3, groups), rel=1e-5)
    assert abs(masked.item() - nt_xent(z1, z2, 0.3).item()) > 1e-3  # the mask changed something


def test_distinct_groups_give_the_unmasked_loss() -> None:
    # Caught bug: the mask also hides the partner or adds columns beyond the anchor's own view.
    torch.manual_seed(2)
    z1, z2 = torch.randn(5, 8), torch.randn(5, 8)
    assert nt_xent(z1, z2, 0.2, groups=torch.tensor([7, 3, 9, 0, 1])).item() == pytest.approx(
        nt_xent(z1, z2, 0.2).item(), rel=1e-6)


def test_a_same_subject_hard_negative_no_longer_counts() -> None:
    # Images 0 and 1 are one subject and look alike (all four views identical); image 2 is orthogonal.
    # Unmasked, each view of 0 or 1 has three equally similar rivals of its positive; masked, only image 2's
    # two views remain (similarity 0): -log(e^(1/t) / (e^(1/t) + 2)). Caught bug: the mask is not applied.
    t = 0.5
    e0, e1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    z = torch.stack([e0, e0, e1])
    same_subject = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2))
    unmasked_anchor = -math.log(math.exp(1 / t) / (3 * math.exp(1 / t) + 2))
    image2_anchor = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 4))
    masked = nt_xent(z, z.clone(), t, groups=torch.tensor([5, 5, 6])).item()
    assert masked == pytest.approx((4 * same_subject + 2 * image2_anchor) / 6, rel=1e-6)
    assert nt_xent(z, z.clone(), t).item() == pytest.approx((4 * unmasked_anchor + 2 * image2_anchor) / 6, rel=1e-6)


def test_rejects_groups_of_the_wrong_shape() -> None:
    with pytest.raises(ValueError, match="groups"):
        nt_xent(torch.randn(4, 8), torch.randn(4, 8), groups=torch.zeros(8, dtype=torch.int64))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _masked_rank(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from sslmri_core.train.distributed import gather_with_grad

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        z1, z2, groups = _two_rank_batch()
        part = slice(rank * 4, (rank + 1) * 4)
        loss = nt_xent(z1[part], z2[part], 0.3, gather_with_grad, groups=groups[part])
        torch.save(loss.detach(), f"{out}/rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _two_rank_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    # Subjects 0 and 1 have images on both ranks: their cross-rank views must be masked too.
    return torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g), torch.tensor([0, 1, 2, 0, 1, 3, 0, 4])


@pytest.mark.slow
def test_two_ranks_mask_the_same_subject_across_ranks(tmp_path: Path) -> None:
    # Caught bug: the ids are not gathered (or gathered without this rank's offset), so a subject's views on
    # the other rank stay negatives: the mean of the ranks' losses then differs from one process's.
    import torch.multiprocessing as mp

    mp.spawn(_masked_rank, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    z1, z2, groups = _two_rank_batch()
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert float(sum(ranks) / 2) == pytest.approx(nt_xent(z1, z2, 0.3, groups=groups).item(), rel=1e-5)
    assert abs(float(sum(ranks) / 2) - nt_xent(z1, z2, 0.3).item()) > 1e-3


def test_subject_numbers_of_the_pool() -> None:
    # Caught bug: images without a subject id share one number, so all of them would be masked as one subject.
    from types import SimpleNamespace

    from sslmri_core.train.pool import subject_ids

    items = [SimpleNamespace(subject=s) for s in ["a", "b", "a", None, None, "b"]]
    ids = subject_ids(items, np.array([5, 0, 1, 2, 3, 4]))
    assert ids.dtype == np.int64 and ids.tolist() == [0, 1, 0, 1, 2, 3]  # pool order: b a b a - -


@pytest.mark.parametrize("mask", [True, False])
def test_pretraining_passes_each_batchs_subjects_to_the_loss(
    mask: bool, synth_tumor: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Caught bug: mask_same_subject is not wired to the loss (or the off switch is ignored).
    from sslmri_core.config import PretrainConfig
    from sslmri_core.store.writer import RunStore
    from sslmri_core.train import pretrain as pretrain_module

    seen: list[torch.Tensor | None] = []

    def recording(*args: object, groups: torch.Tensor | None = None, **kwargs: object) -> torch.Tensor:
        seen.append(groups)
        return nt_xent(*args, groups=groups, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pretrain_module, "nt_xent", recording)
    cfg = PretrainConfig(data=[str(synth_tumor)], model="test_resnet", image_size=64, batch_size=8, max_steps=2,
                         precision="fp32", monitor=False, mask_same_subject=mask, out=str(tmp_path / "runs"))
    pretrain_module.pretrain(cfg, RunStore(f"sqlite:///{tmp_path / 'runs.db'}"), show_progress=False)
    assert len(seen) == 2
    if not mask:
        assert seen == [None, None]
        return
    for groups in seen:
        assert groups is not None and groups.dtype == torch.int64 and groups.shape == (8,)
    # 2 slices per subject in the synthetic set: over the two batches some subject shows up twice in one batch
    # or not; either way each number stands for one subject, so at most 2 images share one.
    assert all(int(torch.bincount(g).max()) <= 2 for g in seen if g is not None)
