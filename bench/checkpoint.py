"""Checkpoint throughput through ``Accelerator.save_state`` / ``load_state`` and the training stall per save.

    python bench/checkpoint.py                       # ~537 MB of fp32 weights, SGD (no optimizer state)
    python bench/checkpoint.py --optimizer adamw     # + 2x that in AdamW state
    python bench/checkpoint.py --dir /local/disk --repeats 5
    python bench/checkpoint.py --device cuda         # the model on the GPU: saving copies it to the host

Save: wall time of ``accelerator.save_state(keep_last=1)`` (serialise, hash, fsync every file, commit by rename,
retention) divided into the bytes it committed. Load: ``accelerator.load_state()`` (find the newest checkpoint,
verify every file's sha256 against the manifest, read into the prepared model/optimizer). "cold" loads evict the
checkpoint's files from the page cache first (``posix_fadvise(DONTNEED)``), "warm" ones read from it.
Stall: a save blocks the loop, so the stall per save is the save time, also shown in training steps.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ember import Accelerator


def build(args: argparse.Namespace, project_dir: Path) -> tuple[Accelerator, torch.nn.Module, torch.optim.Optimizer]:
    acc = Accelerator(accelerator=args.device, project_dir=project_dir, verbose=False, seed=0)
    layers = [torch.nn.Linear(args.width, args.width) for _ in range(args.layers)]
    model = torch.nn.Sequential(*[m for layer in layers for m in (layer, torch.nn.ReLU())])
    if args.optimizer == "adamw":
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    model, optimizer = acc.prepare(model, optimizer)
    return acc, model, optimizer


def train_step(acc: Accelerator, model: torch.nn.Module, optimizer: torch.optim.Optimizer, width: int) -> None:
    loss = model(torch.randn(8, width, device=acc.device)).pow(2).mean()
    acc.backward(loss)
    optimizer.step()
    optimizer.zero_grad()
    if acc.device.type == "cuda":
        torch.cuda.synchronize()


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def evict(path: Path) -> None:
    for p in path.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def timed(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir)")
    p.add_argument("--width", type=int, default=4096)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the model lives")
    p.add_argument("--steps", type=int, default=5, help="training steps timed for the stall comparison")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        acc, model, optimizer = build(args, Path(tmp))
        params = sum(t.numel() for t in model.parameters())
        train_step(acc, model, optimizer, args.width)  # creates optimizer state
        step_times = [timed(lambda: train_step(acc, model, optimizer, args.width)) for _ in range(args.steps)]
        step = statistics.median(step_times)
        saves, loads_cold, loads_warm, size = [], [], [], 0
        for _ in range(args.repeats):
            train_step(acc, model, optimizer, args.width)
            start = time.perf_counter()
            saved = acc.save_state(keep_last=1)
            saves.append(time.perf_counter() - start)
            size = dir_bytes(saved)
            evict(saved)
            loads_cold.append(timed(acc.load_state))
            loads_warm.append(timed(acc.load_state))
        gb = size / 1e9
        save_t, cold_t, warm_t = statistics.median(saves), statistics.median(loads_cold), statistics.median(loads_warm)
        where = torch.cuda.get_device_name() if acc.device.type == "cuda" else "CPU"
        print(f"ember checkpoint benchmark: {params / 1e6:.0f}M fp32 params on {where}, {args.optimizer}, checkpoint "
              f"{gb:.3f} GB, median of {args.repeats}; torch {torch.__version__}, {os.cpu_count()} CPUs, "
              f"{platform.python_implementation()} {platform.python_version()}, dir={args.dir or tempfile.gettempdir()}")
        print(f"{'operation':<28}{'seconds':>10}{'GB/s':>10}")
        print(f"{'save_state':<28}{save_t:>10.3f}{gb / save_t:>10.2f}")
        print(f"{'load_state (cold cache)':<28}{cold_t:>10.3f}{gb / cold_t:>10.2f}")
        print(f"{'load_state (warm cache)':<28}{warm_t:>10.3f}{gb / warm_t:>10.2f}")
        print(f"{'training step':<28}{step:>10.3f}")
        print(f"stall per save: {save_t:.3f} s = {save_t / step:.1f} training steps")
        print("all saves (s): " + ", ".join(f"{t:.3f}" for t in saves))


if __name__ == "__main__":
    main()
