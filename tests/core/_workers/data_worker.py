"""Worker for tests/core/test_data_epochs.py: what a prepared loader yields, epoch by epoch, on 1 or 2 ranks.

    python data_worker.py OUT --workers W MODE [MODE ...]

``epochs``: iteration semantics, IterableDataset shards, worker RNG. ``full``, ``kill``, ``auto``,
``accelerate``: training runs, each with its own Accelerator and project directory ``OUT/<mode>``. Run
directly (1 process) or under ``ember launch --num_processes 2 --cpu``. Each rank writes
``OUT/<mode>-rank{r}.json`` (and, for training, its final weights as ``OUT/weights-<mode>-rank{r}.pt``); the
test compares them with plain PyTorch references.

Training: a tiny model (with dropout, so the RNG state matters) for two epochs on shuffled data, a checkpoint
every few steps. ``kill`` SIGKILLs every rank mid-epoch after a checkpoint; ``auto`` then resumes (from a copy
of ``OUT/kill``) with ember's automatic position: ``load_state()`` and the same loop, ``set_epoch`` called as
DDP users do; ``accelerate`` resumes with Accelerate's recipe: ``load_state(path)``, then
``skip_first_batches(loader, resume_step)`` in the first epoch, ``resume_step`` worked out from the
checkpoint's step as Accelerate's examples do.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset, get_worker_info

from ember import Accelerator

N_ITEMS = 24  # 12 batches of 2 on one rank, 6 per rank on two: no padding
BATCH = 2
EPOCHS = 2
SEED = 7
#: per world size: save every k steps, kill after step n (mid-epoch 1, some steps after the last checkpoint)
TRAIN_PLAN = {1: (5, 17), 2: (4, 10)}


class WorkerAware(IterableDataset):  # type: ignore[type-arg]
    """HF datasets / webdataset style: reads get_worker_info() and yields only this worker's items."""

    sharded_by = ("worker",)

    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self) -> Any:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        return iter(range(worker, self.n, workers))


class Plain(IterableDataset):  # type: ignore[type-arg]
    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self) -> Any:
        return iter(range(self.n))


class Noisy(Dataset):  # type: ignore[type-arg]
    """Each item is (index, a draw from the torch RNG of the worker that loads it)."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        return i, torch.rand(())


def ids(batch: Any) -> list[int]:
    return [int(v) for v in (batch[0] if isinstance(batch, (list, tuple)) else batch).tolist()]


def epochs(acc: Accelerator, workers: int) -> dict[str, Any]:
    """Exhaustion by next() then iter(); break then a new loop; len() before and after each."""
    loader = acc.prepare(DataLoader(TensorDataset(torch.arange(N_ITEMS)), batch_size=BATCH, shuffle=True,
                                    num_workers=workers))
    out: dict[str, Any] = {"len_start": len(loader)}
    it = iter(loader)
    out["by_next"] = [ids(next(it)) for _ in range(out["len_start"])]  # exactly len() batches, no StopIteration
    out["len_after_next"] = len(loader)
    out["after_next"] = [ids(b) for b in iter(loader)]
    out["len_after_full"] = len(loader)
    broken = []
    for b in loader:
        broken.append(ids(b))
        if len(broken) == 2:
            break
    out["broken"], out["len_after_break"] = broken, len(loader)
    out["after_break"] = [ids(b) for b in loader]
    out["state_end"] = loader.state_dict()
    return out


def iterables(acc: Accelerator) -> dict[str, Any]:
    """Items each rank sees from 16-item IterableDatasets read by 2 workers."""
    out = {}
    for name, dataset in (("worker_aware", WorkerAware(16)), ("plain", Plain(16))):
        loader = acc.prepare(DataLoader(dataset, batch_size=None, num_workers=2))
        out[name] = [int(v) for v in loader]
    return out


def worker_rng(acc: Accelerator) -> dict[str, Any]:
    """The random draws of the items of two epochs, loaded by 2 workers."""
    loader = acc.prepare(DataLoader(Noisy(), batch_size=2, num_workers=2))
    return {"epochs": [[[ids(b), b[1].tolist()] for b in loader] for _ in range(2)]}


# ----------------------------------------------------------------------------------------------------------
# train: kill mid-epoch, resume two ways
# ----------------------------------------------------------------------------------------------------------
def model() -> torch.nn.Module:
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Dropout(0.2), torch.nn.Linear(8, 1))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return net


def train(mode: str, workers: int, out: Path) -> dict[str, Any]:
    acc = Accelerator(cpu=True, seed=SEED, verbose=False, project_dir=out / mode)
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(N_ITEMS, 4, generator=g), torch.randn(N_ITEMS, 1, generator=g),
                         torch.arange(N_ITEMS))
    net = model()
    net, opt, loader = acc.prepare(net, torch.optim.SGD(net.parameters(), lr=0.1),
                                   DataLoader(data, batch_size=BATCH, shuffle=True, num_workers=workers))
    save_every, kill_at = TRAIN_PLAN[acc.num_processes]
    steps_per_epoch = len(loader)
    log: list[dict[str, Any]] = []

    def step(batch: Any, epoch: int) -> None:
        x, y, idx = batch
        loss = F.mse_loss(net(x), y)
        acc.backward(loss)
        opt.step()
        opt.zero_grad()
        log.append({"step": acc.step, "epoch": epoch, "idx": idx.tolist(), "loss": loss.item()})
        if mode in ("full", "kill") and acc.step % save_every == 0:
            acc.save_state()
        if mode == "kill" and acc.step == kill_at:
            (out / f"kill-rank{acc.process_index}.json").write_text(json.dumps({"log": log}))
            acc.wait_for_everyone()  # every rank wrote its log; now all die together
            os.kill(os.getpid(), signal.SIGKILL)

    if mode == "accelerate":  # Accelerate's examples: the step is in the checkpoint's name
        path = sorted((out / mode / "checkpoints").glob("step-*"))[-1]
        acc.load_state(path)
        resume_step = int(path.name.split("-")[1])
        starting_epoch = resume_step // len(loader)  # as Accelerate's examples write it: len() after load_state
        resume_step -= starting_epoch * len(loader)
        for epoch in range(starting_epoch, EPOCHS):
            first = epoch == starting_epoch and resume_step
            active = acc.skip_first_batches(loader, resume_step) if first else loader
            for batch in active:
                step(batch, epoch)
    else:
        if mode == "auto":
            acc.load_state()
        for epoch in range(loader.state.epoch, EPOCHS):
            loader.set_epoch(epoch)  # the DDP habit: keeps the restored position
            for batch in loader:
                step(batch, epoch)
    torch.save(acc.unwrap_model(net).state_dict(), out / f"weights-{mode}-rank{acc.process_index}.pt")
    return {"log": log, "steps_per_epoch": steps_per_epoch}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("modes", nargs="+", choices=["epochs", "full", "kill", "auto", "accelerate"])
    args = parser.parse_args()
    torch.use_deterministic_algorithms(True)
    for mode in args.modes:
        if mode == "epochs":
            acc = Accelerator(cpu=True, seed=SEED, verbose=False)
            result = {"world": acc.num_processes, **epochs(acc, args.workers), **iterables(acc), **worker_rng(acc)}
        else:
            result = train(mode, args.workers, args.out)
        (args.out / f"{mode}-rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(result))
    Accelerator(cpu=True, verbose=False).end_training()


if __name__ == "__main__":
    sys.exit(main())
