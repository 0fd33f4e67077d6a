"""CUDA-only checks (skipped without a GPU): async prefetch, mixed precision and NCCL DDP on real GPUs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none; run on a GPU machine)"),
]


def test_prefetch_to_cuda_matches_host_batches() -> None:
    from ember import Accelerator

    acc = Accelerator(verbose=False)
    data = torch.arange(64, dtype=torch.float32).reshape(32, 2)
    dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data), batch_size=4)
    prepared = acc.prepare(dl)
    seen = [batch[0] for batch in prepared]
    assert all(t.is_cuda for t in seen)
    assert torch.equal(torch.cat(seen).cpu(), data)
    assert prepared.base_dataloader.pin_memory


@pytest.mark.parametrize("precision,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_mixed_precision_on_cuda(precision: str, dtype: torch.dtype) -> None:
    from ember import Accelerator

    acc = Accelerator(mixed_precision=precision, verbose=False)
    model = torch.nn.Linear(8, 8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model, opt = acc.prepare(model, opt)
    out = model(torch.randn(4, 8, device=acc.device))
    assert out.dtype == torch.float32  # computed under autocast, handed back in float32 (as Accelerate does)
    with acc.autocast():
        assert model(torch.randn(4, 8, device=acc.device)).dtype == dtype
    before = model.weight.detach().clone()
    acc.backward(out.float().pow(2).mean())
    opt.step()
    assert not torch.equal(before, model.weight.detach())
    if precision == "fp16":  # forced overflow: the step is skipped, weights unchanged
        before = model.weight.detach().clone()
        acc.backward(model(torch.randn(4, 8, device=acc.device)).float().sum() * float("inf"))
        opt.step()
        assert opt.step_was_skipped
        assert torch.equal(before, model.weight.detach())


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_ddp_nccl_two_gpus(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(
        """
        import json, sys, torch
        from ember import Accelerator
        acc = Accelerator(mixed_precision="bf16", seed=0, verbose=False)
        model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        g = torch.Generator().manual_seed(0)
        ds = torch.utils.data.TensorDataset(torch.randn(96, 16, generator=g), torch.randn(96, 1, generator=g))
        dl = torch.utils.data.DataLoader(ds, batch_size=8)
        model, opt, dl = acc.prepare(model, opt, dl)
        n = 0
        for x, y in dl:
            acc.backward(torch.nn.functional.mse_loss(model(x).float(), y)); opt.step(); opt.zero_grad()
            n += acc.gather_for_metrics(y).shape[0]
        flat = torch.cat([p.detach().float().flatten() for p in model.parameters()])
        everyone = acc.gather(flat.unsqueeze(0))
        if acc.is_main_process:
            json.dump({"world": acc.num_processes, "backend": str(torch.distributed.get_backend()), "items": n,
                       "same": bool(torch.equal(everyone[0], everyone[1]))}, open(sys.argv[1], "w"))
        acc.end_training()
        """
    ))
    out = tmp_path / "out.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[2] / "src"), os.environ.get("PYTHONPATH")]))}
    subprocess.run([sys.executable, "-m", "ember.cli", "launch", "--num_processes", "2", str(script), str(out)],
                   check=True, timeout=300, env=env)
    result = json.loads(out.read_text())
    assert result == {"world": 2, "backend": "nccl", "items": 96, "same": True}
