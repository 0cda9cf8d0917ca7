"""The one test that builds the real default encoder: ResNet-50 with one input channel."""

import pytest
import torch

from sslmri_core.config import PretrainConfig
from sslmri_core.train.losses import nt_xent
from sslmri_core.train.models import SimCLRModel, create_encoder

pytestmark = pytest.mark.slow


def test_resnet50_simclr_step() -> None:
    cfg = PretrainConfig()
    model = SimCLRModel(create_encoder(cfg.model), cfg.proj_hidden_dim, cfg.proj_dim)
    assert model.encoder.num_features == 2048
    assert model.encoder.conv1.in_channels == 1
    x = torch.randn(4, 1, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = model(x)
    assert z.shape == (4, cfg.proj_dim)
    loss = nt_xent(z[:2], z[2:], cfg.temperature)
    loss.backward()
    assert torch.isfinite(loss) and model.encoder.conv1.weight.grad is not None
