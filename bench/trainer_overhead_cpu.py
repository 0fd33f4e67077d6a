"""What a Trainer user pays per step on CPU: the whole ``fit`` with the defaults on, in a fresh process, against
the bare loop of the same model — raw PyTorch vs ember.Trainer vs Lightning, interleaved in the same run.

    python bench/trainer_overhead_cpu.py --steps 3000 --repeats 3

Each measurement is a new Python process (imports, set-up and teardown are not shared between runs). It trains the
same tiny MLP (128→256→10, batch 64, AdamW, float32, 1 thread) for one epoch of ``--steps`` batches:

* raw: ``for x, y in DataLoader(...)``: forward, ``loss.backward()``, ``opt.step()``, ``opt.zero_grad()``;
* ember.Trainer / Lightning: ``Trainer(max_epochs=1, accelerator="cpu")`` with every default on (progress bar,
  model summary, default logger, checkpoint at the end of the epoch, a sanity check has no data to run) and
  ``self.log("loss", loss, prog_bar=True)`` in every ``training_step``.

The figure is the wall time of the loop (raw: building the optimizer, then the loop) or of ``trainer.fit(...)``
(Trainers: ``configure_optimizers`` runs inside it), divided by ``--steps``: what a user waits for, one-time costs
of ``fit`` included (the first ``torch.optim`` constructor imports ``torch._dynamo``, about 1 s, in every column).
stdout of the workers is a pipe, as in CI or a batch job.
``--profile`` prints a cProfile of one ember run (sorted by own time) to find where the time goes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

IN, HIDDEN, OUT, BATCH = 128, 256, 10, 64


def _setup(steps: int) -> Any:
    import torch
    from torch.utils.data import TensorDataset

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(steps * BATCH, IN, generator=g), torch.randint(0, OUT, (steps * BATCH,), generator=g))


def _mlp() -> Any:
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(IN, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, OUT))


def _module(base: type) -> Any:
    import torch
    import torch.nn.functional as F

    class Tiny(base):  # type: ignore[misc,valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.net = _mlp()

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = F.cross_entropy(self.net(x), y)
            self.log("loss", loss, prog_bar=True)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

    return Tiny()


def worker(kind: str, steps: int, root: str) -> float:
    """Seconds of the measured region in this (fresh) process."""
    from torch.utils.data import DataLoader

    ds = _setup(steps)
    if kind == "raw":
        import torch
        import torch.nn.functional as F

        model = _mlp()
        start = time.perf_counter()  # the optimizer is built inside the measured region, as fit builds it
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        for x, y in DataLoader(ds, batch_size=BATCH, shuffle=True):
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
        return time.perf_counter() - start
    if kind == "ember":
        import ember as L

        trainer = L.Trainer(max_epochs=1, default_root_dir=root, accelerator="cpu")
        module = _module(L.Module)
    else:
        import lightning as L

        trainer = L.Trainer(max_epochs=1, default_root_dir=root, accelerator="cpu", devices=1)
        module = _module(L.LightningModule)
    loader = DataLoader(ds, batch_size=BATCH, shuffle=True)
    start = time.perf_counter()
    trainer.fit(module, loader)
    return time.perf_counter() - start


def _run(kind: str, steps: int) -> float:
    with tempfile.TemporaryDirectory() as root:
        proc = subprocess.run([sys.executable, __file__, "--worker", kind, "--steps", str(steps), "--root", root],
                              capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if proc.returncode != 0:
            raise RuntimeError(f"{kind} worker failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        return float(json.loads(proc.stdout.strip().splitlines()[-1])["seconds"])


def _profile(steps: int) -> None:
    import cProfile
    import pstats

    with tempfile.TemporaryDirectory() as root:
        prof = cProfile.Profile()
        prof.enable()
        worker("ember", steps, root)
        prof.disable()
    pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(40)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-lightning", action="store_true")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--worker", choices=["raw", "ember", "lightning"])
    p.add_argument("--root", default=None)
    args = p.parse_args()
    if args.worker:
        print(json.dumps({"seconds": worker(args.worker, args.steps, args.root or tempfile.mkdtemp())}))
        return
    if args.profile:
        _profile(args.steps)
        return
    kinds = ["raw", "ember"]
    if not args.no_lightning:
        try:
            import lightning  # noqa: F401

            kinds.append("lightning")
        except ImportError:
            pass
    results: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(args.repeats):
        for kind in kinds:  # interleaved: raw, ember, Lightning, raw, ...
            results[kind].append(_run(kind, args.steps) / args.steps)
    base = statistics.median(results["raw"])
    names = {"raw": "raw PyTorch loop", "ember": "ember.Trainer (defaults)", "lightning": "Lightning Trainer (defaults)"}
    print(f"\n| CPU, 1 thread, {args.steps} steps, fresh process per run | µs/step, median of {args.repeats} "
          "(min–max) | vs raw |\n|---|---:|---:|")
    for kind, values in results.items():
        med = statistics.median(values)
        print(f"| {names[kind]} | {med * 1e6:.1f} ({min(values) * 1e6:.1f}–{max(values) * 1e6:.1f}) | {med / base:.3f}× |")


if __name__ == "__main__":
    main()
