"""CPU overhead of ember's core layer: the same tiny training loop in raw PyTorch, ember.Accelerator and
(when installed) Hugging Face Accelerate, measured in one process with interleaved repeats; plus the cost of
``import ember`` on top of ``import torch`` in fresh interpreters.

    python bench/overhead_cpu.py                 # prints a markdown table
    python bench/overhead_cpu.py --json out.json # also writes the numbers

The loop is the seed's Accelerate loop: ``with accumulate(model)``, ``backward``, ``optimizer.step()``,
``scheduler.step()``, ``optimizer.zero_grad()`` over a DataLoader of in-memory tensors (2-layer MLP,
batch 64, AdamW, linear warm-up schedule, float32). Each repeat runs one epoch per implementation, in
rotating order; the figure is the median per-step time over repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

IN, HIDDEN, OUT, BATCH = 128, 256, 10, 64


def make_data(steps: int) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(steps * BATCH, IN, generator=g)
    y = torch.randint(0, OUT, (steps * BATCH,), generator=g)
    return TensorDataset(x, y)


def make_objects(dataset: TensorDataset) -> tuple[torch.nn.Module, torch.optim.Optimizer, Any, DataLoader[Any]]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(IN, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, OUT))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100))
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(0))
    return model, opt, sched, loader


def raw_loop(dataset: TensorDataset) -> Callable[[], int]:
    model, opt, sched, loader = make_objects(dataset)

    def epoch() -> int:
        steps = 0
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad()
            steps += 1
        return steps

    return epoch


def accelerator_loop(accelerator: Any, dataset: TensorDataset) -> Callable[[], int]:
    model, opt, sched, loader = accelerator.prepare(*make_objects(dataset))

    def epoch() -> int:
        steps = 0
        for x, y in loader:
            with accelerator.accumulate(model):
                loss = F.cross_entropy(model(x), y)
                accelerator.backward(loss)
                opt.step()
                sched.step()
                opt.zero_grad()
            steps += 1
        return steps

    return epoch


def loop_factories(dataset: TensorDataset) -> dict[str, Callable[[], Callable[[], int]]]:
    """name -> a function that builds (and prepares) fresh objects and returns one timed epoch.

    Every repeat starts from the same initial weights, so each implementation does the same numeric work
    (a model drifting into denormal values would otherwise slow one side down and not the other).
    """
    from ember import Accelerator

    ember_acc = Accelerator(cpu=True, verbose=False)
    factories: dict[str, Callable[[], Callable[[], int]]] = {
        "raw PyTorch": lambda: raw_loop(dataset),
        "ember.Accelerator": lambda: accelerator_loop(ember_acc, dataset),
    }
    try:
        import accelerate
    except ImportError:
        pass
    else:
        hf_acc = accelerate.Accelerator(cpu=True)
        factories[f"accelerate {accelerate.__version__}"] = lambda: accelerator_loop(hf_acc, dataset)
    return factories


def time_loops(factories: dict[str, Callable[[], Callable[[], int]]], repeats: int) -> dict[str, list[float]]:
    names = list(factories)
    for name in names:  # warm-up: allocator, autograd and optimizer first-use costs
        factories[name]()()
    per_step: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(repeats):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:  # rotate the order each repeat
            epoch = factories[name]()  # fresh objects, prepared outside the timed region
            t0 = time.perf_counter()
            steps = epoch()
            per_step[name].append((time.perf_counter() - t0) / steps)
    return per_step


IMPORT_SNIPPET = (
    "import time; t0 = time.perf_counter(); import torch; t1 = time.perf_counter(); {stmt}; "
    "t2 = time.perf_counter(); print(t1 - t0, t2 - t1)"
)


def time_imports(runs: int) -> dict[str, dict[str, float]]:
    """Median seconds of ``import torch`` and of each statement after it, in fresh interpreters (interleaved)."""
    stmts = {"import ember": "import ember", "from ember import Accelerator": "from ember import Accelerator"}
    try:
        import accelerate  # noqa: F401
    except ImportError:
        pass
    else:
        stmts["from accelerate import Accelerator"] = "from accelerate import Accelerator"
    torch_s: dict[str, list[float]] = {k: [] for k in stmts}
    extra_s: dict[str, list[float]] = {k: [] for k in stmts}
    for _ in range(runs):
        for name, stmt in stmts.items():
            out = subprocess.run([sys.executable, "-c", IMPORT_SNIPPET.format(stmt=stmt)],
                                 capture_output=True, text=True, check=True).stdout.split()
            torch_s[name].append(float(out[0]))
            extra_s[name].append(float(out[1]))
    return {k: {"torch": statistics.median(torch_s[k]), "extra": statistics.median(extra_s[k])} for k in stmts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=50, help="optimizer steps per epoch (one repeat)")
    parser.add_argument("--repeats", type=int, default=31)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: least noise)")
    parser.add_argument("--import-runs", type=int, default=7)
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # same numeric cost for every loop, whatever values the weights reach

    per_step = time_loops(loop_factories(make_data(args.steps)), args.repeats)
    raw = per_step["raw PyTorch"]
    print(f"## Training-loop overhead ({platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{args.threads} thread(s), {args.steps} steps x {args.repeats} interleaved repeats)\n")
    print("| loop | median step (µs) | min step (µs) | median vs raw | min vs raw | paired median vs raw |")
    print("|---|---:|---:|---:|---:|---:|")
    results: dict[str, Any] = {"argv": sys.argv[1:], "steps": {}, "imports": {}}
    for name, times in per_step.items():
        med, best = statistics.median(times), min(times)
        paired = statistics.median(t / r for t, r in zip(times, raw))  # same repeat, back to back
        results["steps"][name] = {"median_s": med, "min_s": best, "ratio_median": med / statistics.median(raw),
                                  "ratio_min": best / min(raw), "ratio_paired": paired}
        print(f"| {name} | {med * 1e6:.1f} | {best * 1e6:.1f} | {med / statistics.median(raw):.3f}x | "
              f"{best / min(raw):.3f}x | {paired:.3f}x |")

    imports = time_imports(args.import_runs)
    print(f"\n## Import time (fresh interpreters, median of {args.import_runs})\n")
    print("| statement after `import torch` | `import torch` (s) | extra (s) |")
    print("|---|---:|---:|")
    for name, t in imports.items():
        results["imports"][name] = t
        print(f"| `{name}` | {t['torch']:.3f} | {t['extra']:.3f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
