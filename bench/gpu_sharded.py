"""Sharded strategies on the GPUs of one machine: a raw FSDP2 loop vs ember's FSDP (Accelerator and Trainer) vs
ember's DeepSpeed ZeRO-2, GPT ~350M (24 layers, d=1024) in bf16, interleaved in the same call.

    python bench/gpu_sharded.py --repeats 2                 # 1 GPU (world size 1)
    python bench/gpu_sharded.py --repeats 2 --nproc 2 --modes all   # 2 GPUs, every row of the comparison
    python bench/gpu_sharded.py --cpu --repeats 1 --nproc 2 --modes raw_fsdp2,ember_fsdp,ember_zero3
                                                            # a smoke run on CPU processes (gloo, a tiny GPT)

``--modes all`` adds the anchors' own sharded paths and ZeRO-3: Accelerate's FSDP2 plugin and DeepSpeed plugin,
Lightning's ``FSDPStrategy`` and DeepSpeed strategies, and ember's ZeRO-3 in both layers.

Every run is a fresh process (``torchrun`` for raw, ``ember launch`` for ember). Reported per mode: tokens/s
(median of the repeats, after warm-up steps) and peak GPU memory per GPU (``torch.cuda.max_memory_allocated``).
The raw loop is what torchtitan does: ``fully_shard`` per block, then the root, ``MixedPrecisionPolicy(bf16,
float32 reduce)``, fused AdamW, no autocast.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
MODES = ("raw_fsdp2", "ember_fsdp", "ember_fsdp_trainer", "ember_zero2")
#: the rest of the comparison: the anchors' sharded paths, and ZeRO-2/3 in every layer
MORE = ("accelerate_fsdp2", "lightning_fsdp", "ember_zero2_trainer", "ember_zero3", "ember_zero3_trainer",
        "accelerate_zero2", "accelerate_zero3", "lightning_zero2", "lightning_zero3")
#: diagnostics: ember's FSDP loop with one difference from the raw loop removed at a time
VARIANTS = ("ember_fsdp_opt_after", "ember_fsdp_raw_loader")


class _Profile:
    """``--profile``: a torch.profiler trace of the timed steps; prints the top kernels and CPU ops (rank 0)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.prof = args, None

    def tick(self, i: int) -> None:
        import torch

        if self.args.profile and i == self.args.warmup:
            acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
            self.prof = torch.profiler.profile(activities=acts)
            self.prof.__enter__()

    def done(self, label: str) -> None:

        if self.prof is None:
            return
        _sync()
        self.prof.__exit__(None, None, None)
        if os.environ.get("RANK", "0") != "0":
            return
        ka = self.prof.key_averages()
        steps = self.args.steps
        cuda_total = sum(e.self_device_time_total for e in ka) / 1e3 / steps
        cpu_total = sum(e.self_cpu_time_total for e in ka) / 1e3 / steps
        print(f"PROFILE {label}: GPU kernel time {cuda_total:.1f} ms/step, CPU op time {cpu_total:.1f} ms/step")
        print(ka.table(sort_by="self_device_time_total", row_limit=18, max_name_column_width=70))
        print(ka.table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=70), flush=True)


#: set by --cpu: gloo processes on the CPU and a tiny GPT (a smoke run of the code paths, not a measurement)
CPU = os.environ.get("BENCH_CPU") == "1"


def _config() -> Any:
    from _gpt import Config

    if CPU:
        return Config(vocab_size=256, n_layer=2, n_embd=64, n_head=4, block_size=64)
    return Config(n_layer=24, n_embd=1024, n_head=16, block_size=1024)


def _device() -> Any:
    import torch

    if CPU:
        return torch.device("cpu")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    torch.cuda.set_device(device)
    return device


def _sync() -> None:
    import torch

    if not CPU:
        torch.cuda.synchronize()


def _peak_gib() -> float:
    import torch

    return 0.0 if CPU else torch.cuda.max_memory_allocated() / 2**30


def _data(args: argparse.Namespace, world: int) -> Any:
    from _gpt import RandomTokens

    return RandomTokens(args.batch * world * (args.warmup + args.steps), _config())


def raw_fsdp2(args: argparse.Namespace) -> tuple[float, int]:
    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from _gpt import GPT, Block

    dist.init_process_group("gloo" if CPU else "nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = _device()
    torch.manual_seed(0)
    model = GPT(_config())
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in model.blocks:
        assert isinstance(block, Block)
        fully_shard(block, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=not CPU)
    ds = _data(args, world)
    sampler = torch.utils.data.DistributedSampler(ds, shuffle=True, seed=0)
    dl = torch.utils.data.DataLoader(ds, batch_size=args.batch, sampler=sampler, pin_memory=not CPU, num_workers=2)
    start = 0.0
    prof = _Profile(args)
    for i, (x, y) in enumerate(dl):
        if i == args.warmup:
            _sync()
            start = time.perf_counter()
        prof.tick(i)
        loss = model(x.to(device, non_blocking=True), y.to(device, non_blocking=True))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    _sync()
    elapsed = time.perf_counter() - start
    prof.done("raw_fsdp2")
    dist.destroy_process_group()
    return elapsed, rank


def _ember_strategy(kind: str) -> Any:
    from _gpt import Block

    if kind in ("zero2", "zero3"):
        return "deepspeed_stage_2" if kind == "zero2" else "deepspeed_stage_3"
    from ember.strategies import FSDPStrategy

    return FSDPStrategy(auto_wrap_policy={Block})


def ember_accelerator(args: argparse.Namespace, kind: str, variant: str = "") -> tuple[float, int]:
    import torch

    from _gpt import GPT
    from ember import Accelerator

    acc = Accelerator(mixed_precision="bf16", strategy=_ember_strategy(kind), seed=0, verbose=False, cpu=CPU)
    torch.manual_seed(0)
    model = GPT(_config())
    dl = torch.utils.data.DataLoader(_data(args, acc.num_processes), batch_size=args.batch, shuffle=True,
                                     num_workers=2, pin_memory=not CPU)
    if variant == "opt_after":  # the optimizer built on the sharded parameters, as the raw loop does
        model, dl = acc.prepare(model, dl)
        opt = acc.prepare(torch.optim.AdamW(model.parameters(), lr=3e-4, fused=not CPU))
    elif variant == "raw_loader":  # the model through ember, the batches moved as the raw loop moves them
        opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=not CPU)
        model, opt = acc.prepare(model, opt)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=kind == "fsdp" and not CPU)
        model, opt, dl = acc.prepare(model, opt, dl)
    start = 0.0
    prof = _Profile(args)
    for i, (x, y) in enumerate(dl):
        if i == args.warmup:
            _sync()
            start = time.perf_counter()
        prof.tick(i)
        if variant == "raw_loader":
            x, y = x.to(acc.device, non_blocking=True), y.to(acc.device, non_blocking=True)
        loss = model(x, y)
        acc.backward(loss)
        opt.step()
        opt.zero_grad(set_to_none=True)
    _sync()
    elapsed = time.perf_counter() - start
    prof.done(f"ember_{kind}{'_' + variant if variant else ''}")
    rank = acc.process_index
    acc.end_training()
    return elapsed, rank


def _trainer_fit(pkg: Any, args: argparse.Namespace, kind: str, strategy: Any, **extra: Any) -> tuple[float, int]:
    """One ``fit`` with ember's or Lightning's Trainer (``pkg``: the same names in both), timed from step ``warmup``."""
    import torch

    from _gpt import GPT

    marks: list[float] = []

    class Clock(pkg.Callback):  # type: ignore[misc,name-defined]
        def on_train_batch_start(self, trainer: Any, *rest: Any) -> None:
            if trainer.global_step == args.warmup and not marks:
                _sync()
                marks.append(time.perf_counter())

    class LM(pkg.LightningModule):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.gpt = GPT(_config())

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return self.gpt(*batch)

        def configure_optimizers(self) -> Any:
            return torch.optim.AdamW(self.parameters(), lr=3e-4, fused=kind == "fsdp" and not CPU)

    trainer = pkg.Trainer(accelerator="cpu" if CPU else "gpu", strategy=strategy, precision="bf16-mixed",
                          max_steps=args.warmup + args.steps, logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, callbacks=[Clock()], **extra)
    world = trainer.world_size
    dl = torch.utils.data.DataLoader(_data(args, world), batch_size=args.batch, shuffle=True, num_workers=2)
    trainer.fit(LM(), dl)
    _sync()
    return time.perf_counter() - marks[0], trainer.global_rank


def ember_trainer(args: argparse.Namespace, kind: str = "fsdp") -> tuple[float, int]:
    import ember

    return _trainer_fit(ember, args, kind, _ember_strategy(kind))


def accelerate_loop(args: argparse.Namespace, kind: str) -> tuple[float, int]:
    """Accelerate's own sharded paths: its FSDP2 plugin (per-block wrap by class name) or its DeepSpeed plugin."""
    import torch
    from accelerate import Accelerator as HFAccelerator
    from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin

    from _gpt import GPT

    if kind == "fsdp2":
        plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
                                                transformer_cls_names_to_wrap=["Block"], reshard_after_forward=True)
        acc = HFAccelerator(mixed_precision="bf16", fsdp_plugin=plugin, cpu=CPU)
    else:
        acc = HFAccelerator(mixed_precision="bf16", cpu=CPU,
                            deepspeed_plugin=DeepSpeedPlugin(zero_stage=int(kind[-1]), gradient_accumulation_steps=1))
    torch.manual_seed(0)
    model = GPT(_config())
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=kind == "fsdp2" and not CPU)
    dl = torch.utils.data.DataLoader(_data(args, acc.num_processes), batch_size=args.batch, shuffle=True,
                                     num_workers=2, pin_memory=not CPU)
    model, opt, dl = acc.prepare(model, opt, dl)
    start = 0.0
    for i, (x, y) in enumerate(dl):
        if i == args.warmup:
            _sync()
            start = time.perf_counter()
        acc.backward(model(x, y))
        opt.step()
        opt.zero_grad(set_to_none=True)
    _sync()
    elapsed = time.perf_counter() - start
    rank = acc.process_index
    acc.end_training()
    return elapsed, rank


def lightning_loop(args: argparse.Namespace, kind: str) -> tuple[float, int]:
    """Lightning's Trainer with its FSDPStrategy (per-block wrap) or its DeepSpeed strategies, under torchrun."""
    import lightning.pytorch as pl
    from lightning.pytorch.strategies import FSDPStrategy

    from _gpt import Block

    strategy: Any = FSDPStrategy(auto_wrap_policy={Block}) if kind == "fsdp" else f"deepspeed_stage_{kind[-1]}"
    return _trainer_fit(pl, args, kind, strategy, devices=int(os.environ.get("WORLD_SIZE", 1)))


def worker(args: argparse.Namespace) -> None:

    run = {"raw_fsdp2": lambda: raw_fsdp2(args), "ember_fsdp": lambda: ember_accelerator(args, "fsdp"),
           "ember_fsdp_trainer": lambda: ember_trainer(args), "ember_zero2": lambda: ember_accelerator(args, "zero2"),
           "ember_fsdp_opt_after": lambda: ember_accelerator(args, "fsdp", "opt_after"),
           "ember_fsdp_raw_loader": lambda: ember_accelerator(args, "fsdp", "raw_loader"),
           "ember_zero3": lambda: ember_accelerator(args, "zero3"),
           "ember_zero2_trainer": lambda: ember_trainer(args, "zero2"),
           "ember_zero3_trainer": lambda: ember_trainer(args, "zero3"),
           "accelerate_fsdp2": lambda: accelerate_loop(args, "fsdp2"),
           "accelerate_zero2": lambda: accelerate_loop(args, "zero2"),
           "accelerate_zero3": lambda: accelerate_loop(args, "zero3"),
           "lightning_fsdp": lambda: lightning_loop(args, "fsdp"),
           "lightning_zero2": lambda: lightning_loop(args, "zero2"),
           "lightning_zero3": lambda: lightning_loop(args, "zero3")}
    elapsed, rank = run[args.worker]()
    if rank == 0:
        world = int(os.environ.get("WORLD_SIZE", 1))
        tokens = args.steps * args.batch * world * _config().block_size
        print("RESULT " + json.dumps({"mode": args.worker, "tokens_per_s": tokens / elapsed,
                                      "peak_gib": _peak_gib(), "world": world}),
              flush=True)


def launch(mode: str, args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    flags = ["--worker", mode, "--batch", str(args.batch), "--warmup", str(args.warmup), "--steps", str(args.steps)]
    flags += ["--profile"] if args.profile else []
    if mode.startswith("ember"):
        cmd = [sys.executable, "-m", "ember.cli", "launch", "--num_processes", str(args.nproc)]
        cmd += ["--cpu"] if args.cpu else []
    else:  # raw PyTorch and the anchors start under torchrun
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}"]
    env = {**os.environ, "BENCH_CPU": "1" if args.cpu else "0"}
    if args.cpu:
        env.update(DS_ACCELERATOR="cpu", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    out = subprocess.run([*cmd, __file__, *flags, *extra], capture_output=True, text=True, timeout=900, env=env)
    if args.profile:
        print("\n".join(line for line in out.stdout.splitlines() if not line.startswith("RESULT ")), flush=True)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line[7:]))
    raise RuntimeError(f"{mode} failed:\n{out.stdout[-3000:]}\n{out.stderr[-4000:]}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--nproc", type=int, default=1)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--worker", choices=MODES + MORE + VARIANTS)
    p.add_argument("--cpu", action="store_true", help="a smoke run on CPU processes (gloo, a tiny GPT)")
    p.add_argument("--profile", action="store_true", help="print a torch.profiler summary of the timed steps")
    args, extra = p.parse_known_args()
    if args.worker:
        worker(args)
        return
    modes = list(MODES + MORE) if args.modes == "all" else args.modes.split(",")
    results: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    for _ in range(args.repeats):
        for mode in modes:
            try:
                r = launch(mode, args, extra)
            except Exception as err:  # report and go on: one failing mode must not lose the other numbers
                print(f"{mode}: {err}", file=sys.stderr, flush=True)
                continue
            results[mode].append(r)
            print(json.dumps(r), flush=True)
    base = statistics.median(r["tokens_per_s"] for r in results["raw_fsdp2"]) if results.get("raw_fsdp2") else None
    base_mem = statistics.median(r["peak_gib"] for r in results["raw_fsdp2"]) if results.get("raw_fsdp2") else None
    what = f"{args.nproc} CPU process(es), tiny GPT (a smoke run, not a measurement)" if args.cpu else \
        f"GPT ~350M, bf16, {args.nproc} GPU(s), batch {args.batch}x1024"
    print(f"\n| {what} | tokens/s (median of {args.repeats}) "
          "| vs raw FSDP2 | peak GiB/GPU | vs raw |\n|---|---:|---:|---:|---:|")
    for mode in modes:
        if results[mode]:
            tps = statistics.median(r["tokens_per_s"] for r in results[mode])
            mem = statistics.median(r["peak_gib"] for r in results[mode])
            vs = f"{tps / base:.3f}×" if base else "–"
            dm = f"{mem - base_mem:+.2f}" if base_mem is not None else "–"
            print(f"| {mode} | {tps:,.0f} | {vs} | {mem:.2f} | {dm} |")


if __name__ == "__main__":
    main()
