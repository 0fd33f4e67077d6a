"""One DDP training run (raw PyTorch, ember or Accelerate); rank 0 prints a JSON line with tokens/s."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _gpt import GPT, Config, RandomTokens


def raw(args: argparse.Namespace, c: Config) -> tuple[float, int]:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    torch.cuda.set_device(device)
    torch.manual_seed(0)
    model = DDP(GPT(c).to(device), device_ids=[device.index])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=True)
    ds = RandomTokens(args.batch * world * (args.warmup + args.steps), c)
    sampler = torch.utils.data.DistributedSampler(ds, shuffle=True, seed=0)
    dl = torch.utils.data.DataLoader(ds, batch_size=args.batch, sampler=sampler, pin_memory=True, num_workers=2)
    start = 0.0
    for i, (x, y) in enumerate(dl):
        if i == args.warmup:
            torch.cuda.synchronize()
            start = time.perf_counter()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    dist.destroy_process_group()
    return elapsed, rank


def ember_loop(args: argparse.Namespace, c: Config) -> tuple[float, int]:
    from ember import Accelerator

    acc = Accelerator(mixed_precision="bf16", seed=0, verbose=False)
    model = GPT(c)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=True)
    ds = RandomTokens(args.batch * acc.num_processes * (args.warmup + args.steps), c)
    dl = torch.utils.data.DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=2)
    model, opt, dl = acc.prepare(model, opt, dl)
    start = 0.0
    for i, (x, y) in enumerate(dl):
        if i == args.warmup:
            torch.cuda.synchronize()
            start = time.perf_counter()
        loss = model(x, y)
        acc.backward(loss)
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    rank = acc.process_index
    acc.end_training()
    return elapsed, rank


def accelerate_loop(args: argparse.Namespace, c: Config) -> tuple[float, int]:
    from accelerate import Accelerator

    acc = Accelerator(mixed_precision="bf16")
    torch.manual_seed(0)
    model = GPT(c)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=True)
    ds = RandomTokens(args.batch * acc.num_processes * (args.warmup + args.steps), c)
    dl = torch.utils.data.DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=2, pin_memory=True)
    model, opt, dl = acc.prepare(model, opt, dl)
    start = 0.0
    for i, (x, y) in enumerate(dl):
        if i == args.warmup:
            torch.cuda.synchronize()
            start = time.perf_counter()
        loss = model(x, y)
        acc.backward(loss)
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    rank = acc.process_index
    acc.end_training()
    return elapsed, rank


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=["raw", "ember", "accelerate"], required=True)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--steps", type=int, default=60)
    args = p.parse_args()
    c = Config()
    elapsed, rank = {"raw": raw, "ember": ember_loop, "accelerate": accelerate_loop}[args.mode](args, c)
    if rank == 0:
        world = int(os.environ.get("WORLD_SIZE", 1))
        tokens = args.steps * args.batch * world * c.block_size
        print("RESULT " + json.dumps({"mode": args.mode, "tokens_per_s": tokens / elapsed, "step_ms": 1000 * elapsed / args.steps,
                                      "world": world}), flush=True)


if __name__ == "__main__":
    main()
