"""NT-Xent against a slow transcription of the SimCLR paper's formula and its closed form."""

import math

import pytest
import torch
import torch.nn.functional as F

from sslmri_core.train.losses import nt_xent


def slow_nt_xent(z1: torch.Tensor, z2: torch.Tensor, t: float) -> float:
    """Eq. (1) of Chen et al. 2020, summed over all 2N anchors, one loop at a time."""
    z = [F.normalize(v, dim=0) for v in torch.cat([z1, z2])]
    n2 = len(z)
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        j = (i + n) % n2
        num = math.exp(float(z[i] @ z[j]) / t)
        den = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(n2) if k != i)
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
