"""One script for every launch mode of the core tests: ``python``, ``torchrun`` and ``ember launch``.

Usage: ``core_worker.py OUT_DIR MODE`` with MODE ``full`` (every check) or ``ddp`` (the DDP training only).
Each rank writes ``OUT_DIR/rank{r}.json`` (numbers, lists) and ``OUT_DIR/rank{r}.pt`` (parameters);
the test process asserts on them.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BATCH, LR, make_data, make_model

from ember import Accelerator


def params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().clone() for k, v in model.state_dict().items()}


def train(acc: Accelerator, count_hooks: bool = False) -> dict[str, Any]:
    """An ordinary loop over an ember-prepared DataLoader; counts DDP all-reduce calls per micro-step."""
    x, y = make_data()
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=False)
    model, opt, loader = acc.prepare(model, opt, loader)
    calls = [0]
    if count_hooks and isinstance(model, torch.nn.parallel.DistributedDataParallel):
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        def counting_hook(state, bucket):  # type: ignore[no-untyped-def]  # DDP checks real annotations
            calls[0] += 1
            return allreduce_hook(state, bucket)

        model.register_comm_hook(None, counting_hook)
    allreduces, syncs, local_items = [], [], []
    for xb, yb in loader:
        local_items.append(xb.shape[0])
        with acc.accumulate(model):
            before = calls[0]
            acc.backward(F.mse_loss(model(xb), yb))
            allreduces.append(calls[0] - before)
            syncs.append(acc.sync_gradients)
            opt.step()
            opt.zero_grad()
    return {
        "params": params(acc.unwrap_model(model)),
        "allreduces": allreduces,
        "syncs": syncs,
        "optimizer_steps": acc.step,
        "local_items": local_items,
    }


class Stream(IterableDataset):  # type: ignore[type-arg]
    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self) -> Any:
        return iter(torch.tensor([float(i)]) for i in range(self.n))


def gather_checks(out: dict[str, Any]) -> None:
    dataset = TensorDataset(torch.arange(13, dtype=torch.float32))
    for even in (True, False):
        acc = Accelerator(cpu=True, mixed_precision="no", even_batches=even)
        loader = acc.prepare(DataLoader(dataset, batch_size=4, shuffle=False))
        local, gathered, objects = [], [], []
        for (batch,) in loader:
            local += batch.tolist()
            gathered += acc.gather_for_metrics(batch * 10).tolist()
            objects += acc.gather_for_metrics([f"item{int(v)}" for v in batch.tolist()])
        out[f"gather_even{even}_local"] = local
        out[f"gather_even{even}"] = gathered
        out[f"gather_even{even}_objects"] = objects
    acc = Accelerator(cpu=True, mixed_precision="no", seed=3)
    loader = acc.prepare(DataLoader(dataset, batch_size=4, shuffle=True))
    out["gather_shuffled"] = [v for (b,) in loader for v in acc.gather_for_metrics(b).tolist()]
    loader = acc.prepare(DataLoader(Stream(11), batch_size=2))
    out["iterable_local"] = [v for b in loader for v in b.view(-1).tolist()]


def scheduler_checks(out: dict[str, Any]) -> None:
    """3 optimizer steps of 2 micro-batches each; the LR halves on every real optimizer step."""
    acc = Accelerator(cpu=True, mixed_precision="no", gradient_accumulation_steps=2)
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5**s)
    model, opt, sched = acc.prepare(model, opt, sched)
    x, y = make_data()
    lrs = []
    for i in range(6):
        with acc.accumulate(model):
            acc.backward(F.mse_loss(model(x[2 * i : 2 * i + 2]), y[2 * i : 2 * i + 2]))
            opt.step()
            sched.step()
            opt.zero_grad()
        lrs.append(sched.get_last_lr()[0])
    out["lrs"] = lrs
    out["scheduler_last_epoch"] = sched.last_epoch
    out["scheduler_optimizer_steps"] = acc.step


def num_items_check(tensors: dict[str, Any]) -> None:
    """Micro-batches of different sizes on each rank (rank 0: 1 and 3 items, rank 1: 2 and 4), weighted with
    ``num_items``: the one optimizer step must use the mean gradient over all 10 items of both ranks."""
    acc = Accelerator(cpu=True, mixed_precision="no", gradient_accumulation_steps=2)
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    model, opt = acc.prepare(model, opt)
    x, y = make_data(10)
    slices = [(0, 1), (1, 4)] if acc.process_index == 0 else [(4, 6), (6, 10)]
    for lo, hi in slices:
        with acc.accumulate(model):
            acc.backward(F.mse_loss(model(x[lo:hi]), y[lo:hi]), num_items=hi - lo)
            opt.step()
            opt.zero_grad()
    assert acc.step == 1
    tensors["num_items"] = params(acc.unwrap_model(model))


def main() -> None:
    out_dir, mode = Path(sys.argv[1]), sys.argv[2]
    acc = Accelerator(cpu=True)  # precision and strategy as the launcher says (EMBER_* variables)
    out: dict[str, Any] = {
        "rank": acc.process_index,
        "world": acc.num_processes,
        "node_rank": int(os.environ.get("GROUP_RANK", "0")),
        "precision": acc.precision.name,
        "strategy": acc.strategy.name,
        "torch_world": torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1,
    }
    tensors: dict[str, Any] = {}
    ddp = train(acc)
    tensors["ddp"] = ddp.pop("params")
    out["ddp"] = ddp
    if mode == "full":
        accum = train(Accelerator(cpu=True, mixed_precision="no", gradient_accumulation_steps=3), count_hooks=True)
        tensors["accum"] = accum.pop("params")
        out["accum"] = accum
        num_items_check(tensors)
        gather_checks(out)
        scheduler_checks(out)
    torch.save(tensors, out_dir / f"rank{acc.process_index}.pt")
    (out_dir / f"rank{acc.process_index}.json").write_text(json.dumps(out))
    acc.end_training()


if __name__ == "__main__":
    main()
