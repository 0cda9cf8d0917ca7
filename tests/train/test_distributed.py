"""Data-parallel pretraining: negatives gathered across 2 CPU processes (gloo), and `torchrun ... pretrain`
writing one run from rank 0."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sslmri_core.train.distributed import gather_with_grad
from sslmri_core.train.losses import nt_xent
from sslmri_core.train.optim import default_lr
from sslmri_core.store.queries import run_detail
from sslmri_core.store.writer import RunStore
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

N, D, T = 4, 8, 0.3  # images per rank, projection size, temperature


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _global_views() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(2 * N, D, generator=g, dtype=torch.float64), torch.randn(2 * N, D, generator=g, dtype=torch.float64)


def _rank_main(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        z1, z2 = _global_views()
        a = z1[rank * N : (rank + 1) * N].clone().requires_grad_(True)
        b = z2[rank * N : (rank + 1) * N].clone().requires_grad_(True)
        loss = nt_xent(a, b, T, gather_with_grad)
        loss.backward()
        local_only = nt_xent(a.detach(), b.detach(), T)
        torch.save({"loss": loss.detach(), "local_only": local_only, "grad_a": a.grad, "grad_b": b.grad},
                   f"{out}/rank{rank}.pt")
        # Both ranks done before teardown, as the product's own shutdown does: tearing gloo down while the
        # other rank still finishes its backward's all-gather aborted a rank ("terminate called without an
        # active exception", SIGABRT) in one CI run.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_ranks_see_each_others_negatives_and_gradients_flow_back(tmp_path: Path) -> None:
    mp.spawn(_rank_main, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]

    z1, z2 = _global_views()
    z1.requires_grad_(True)
    z2.requires_grad_(True)
    whole = nt_xent(z1, z2, T)  # one process, the concatenated batch of 2N images: 4N - 2 negatives per view
    whole.backward()

    ddp_loss = (ranks[0]["loss"] + ranks[1]["loss"]) / 2  # what DDP's gradient averaging optimises
    assert float(ddp_loss) == pytest.approx(float(whole.detach()), rel=1e-6)  # NT-Xent runs in float32
    # Without the gather each rank would see only its own 2N - 2 negatives: an easier, different loss.
    local = (ranks[0]["local_only"] + ranks[1]["local_only"]) / 2
    assert abs(float(local) - float(whole.detach())) > 0.05
    # The gather keeps gradients: each rank's rows get d(sum of both ranks' losses)/dz; DDP's mean over 2 ranks
    # then equals the gradient of the global loss.
    grad_a = torch.cat([ranks[0]["grad_a"], ranks[1]["grad_a"]]) / 2
    grad_b = torch.cat([ranks[0]["grad_b"], ranks[1]["grad_b"]]) / 2
    torch.testing.assert_close(grad_a, z1.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_b, z2.grad, rtol=1e-5, atol=1e-6)


def test_torchrun_pretrain_two_processes_one_run(synth_tumor: Path, tmp_path: Path) -> None:
    db, out = f"sqlite:///{tmp_path / 'runs.db'}", tmp_path / "runs"
    env = {**os.environ, "SSLMRI_DB": db, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "cli.py", "pretrain", "--data", str(synth_tumor), "--model", "test_resnet", "--image-size", "64",
           "--batch-size", "4", "--epochs", "2", "--optimizer", "sgd", "--precision", "fp32", "--db", db, "--out", str(out),
           "--no-progress", "--json"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    store = RunStore(db)
    (run,) = store.list_runs()  # rank 1 wrote nothing: one run, one series
    assert run.status == "finished" and summary["run_id"] == run.id
    losses = store.metric_series(run.id, "loss")
    params = run_detail(db, run.id).params
    n_pool = int(params["n_images"])  # the 40 images less the test groups of the split
    assert params["world_size"] == "2" and 24 <= n_pool < 40
    # global batch 2 x 4 = 8: n_pool // 8 steps per epoch (one process with batch 4 would take twice as many)
    assert [s for s, _, _ in losses] == list(range(1, 2 * (n_pool // 8) + 1))
    assert len(store.metric_series(run.id, "knn_acc")) == 3  # before training and after each epoch
    # SGD's default learning rate scales with the global batch (2 x 4), not with one process's 4 images.
    assert params["optimizer"] == "sgd" and float(params["lr"]) == pytest.approx(default_lr("sgd", 8))
    assert Path(run.checkpoint_path).is_file()
