"""2-GPU DDP bf16 throughput of a GPT-2-small-shaped model: raw PyTorch vs ember (vs Accelerate), same run.

    python bench/gpu_ddp.py --repeats 2

raw runs under `torchrun --nproc_per_node 2`, ember under `ember launch --num_processes 2`, Accelerate under
`torchrun` too; runs are interleaved (raw, ember, accelerate, raw, ...) and the median is reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def run(mode: str, nproc: int, extra: list[str]) -> dict[str, float]:
    worker = str(HERE / "_ddp_worker.py")
    if mode == "ember":
        cmd = [sys.executable, "-m", "ember.cli", "launch", "--num_processes", str(nproc), worker]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", worker]
    out = subprocess.run([*cmd, "--mode", mode, *extra], capture_output=True, text=True, timeout=900)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line[7:]))
    raise RuntimeError(f"{mode} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--modes", default="raw,ember,accelerate")
    args, extra = p.parse_known_args()
    modes = args.modes.split(",")
    results: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(args.repeats):
        for mode in modes:
            try:
                r = run(mode, args.nproc, extra)
            except Exception as err:  # report and go on: one missing package must not lose the other numbers
                print(f"{mode}: {err}", file=sys.stderr)
                continue
            results[mode].append(r["tokens_per_s"])
            print(json.dumps(r), flush=True)
    base = statistics.median(results["raw"])
    print(f"\n| loop ({args.nproc} GPUs, DDP, bf16) | tokens/s (median of {args.repeats}) | vs raw |\n|---|---|---|")
    for mode in modes:
        if results[mode]:
            med = statistics.median(results[mode])
            print(f"| {mode} | {med:,.0f} | {med / base:.3f} |")


if __name__ == "__main__":
    main()
