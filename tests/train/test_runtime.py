"""When ``pretrain --compile auto`` compiles: only where the compile time is won back."""

import pytest
import torch

from sslmri_core.config import COMPILE_AUTO_MIN_STEPS
from sslmri_core.train.runtime import use_compile


def test_auto_compiles_only_long_cuda_runs() -> None:
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert use_compile("auto", cuda, COMPILE_AUTO_MIN_STEPS)
    assert not use_compile("auto", cuda, COMPILE_AUTO_MIN_STEPS - 1)  # a short run would spend longer compiling
    assert not use_compile("auto", cpu, 10 * COMPILE_AUTO_MIN_STEPS)
    assert use_compile("on", cpu, 1) and not use_compile("off", cuda, 10 * COMPILE_AUTO_MIN_STEPS)
    with pytest.raises(ValueError, match="--compile must be one of"):
        use_compile("maybe", cpu, 1)
