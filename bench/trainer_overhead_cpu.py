"""Per-step overhead of the structured layer on CPU: raw PyTorch vs ember.Trainer vs Lightning, same run.

    python bench/trainer_overhead_cpu.py --steps 1500 --repeats 3

Each implementation trains the same tiny MLP (128→256→10, batch 64, AdamW, float32) for one epoch over
in-memory tensors. The Trainer and Lightning run with their defaults — progress bar on, model summary on,
default logger, checkpoint at the end of the epoch — and the module calls ``self.log("train_loss", loss,
prog_bar=True)`` every step. A callback (or, in the raw loop, the loop itself) records a timestamp after every
step; the figure is the median step-to-step interval after 50 warm-up steps, so one-time set-up and the
end-of-epoch checkpoint are not counted. Runs alternate raw → ember → Lightning, ``--repeats`` times.

stdout is a pipe in the reported runs (as in CI or a batch job); both progress bars then print at most one
line per epoch (ember) or update their non-interactive bar (Lightning's TQDM).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

IN, HIDDEN, OUT, BATCH, WARMUP = 128, 256, 10, 64, 50


def data(steps: int) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(steps * BATCH, IN, generator=g), torch.randint(0, OUT, (steps * BATCH,), generator=g))


def mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(IN, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, OUT))


def median_interval(stamps: list[float]) -> float:
    deltas = [b - a for a, b in zip(stamps[WARMUP:], stamps[WARMUP + 1 :])]
    return statistics.median(deltas)


def run_raw(ds: TensorDataset) -> float:
    model = mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    stamps: list[float] = []
    for x, y in DataLoader(ds, batch_size=BATCH, shuffle=True):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        stamps.append(time.perf_counter())
    return median_interval(stamps)


def _module_class(base: type) -> type:
    class Tiny(base):  # type: ignore[misc,valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.net = mlp()

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = F.cross_entropy(self.net(x), y)
            self.log("train_loss", loss, prog_bar=True)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

    return Tiny


def run_ember(ds: TensorDataset, root: str) -> float:
    import ember
    from ember.callbacks import Callback

    stamps: list[float] = []

    class Stamp(Callback):
        def on_train_batch_end(self, *args: Any) -> None:
            stamps.append(time.perf_counter())

    trainer = ember.Trainer(max_epochs=1, callbacks=[Stamp()], default_root_dir=root, accelerator="cpu")
    trainer.fit(_module_class(ember.Module)(), DataLoader(ds, batch_size=BATCH, shuffle=True))
    return median_interval(stamps)


def run_lightning(ds: TensorDataset, root: str) -> float:
    import lightning as L

    stamps: list[float] = []

    class Stamp(L.Callback):
        def on_train_batch_end(self, *args: Any) -> None:
            stamps.append(time.perf_counter())

    trainer = L.Trainer(max_epochs=1, callbacks=[Stamp()], default_root_dir=root, accelerator="cpu", devices=1)
    trainer.fit(_module_class(L.LightningModule)(), DataLoader(ds, batch_size=BATCH, shuffle=True))
    return median_interval(stamps)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-lightning", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    ds = data(args.steps)
    results: dict[str, list[float]] = {"raw": [], "ember.Trainer": [], "Lightning": []}
    try:
        import lightning  # noqa: F401
    except ImportError:
        args.no_lightning = True
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as root:
            results["raw"].append(run_raw(ds))
            results["ember.Trainer"].append(run_ember(ds, os.path.join(root, "ember")))
            if not args.no_lightning:
                results["Lightning"].append(run_lightning(ds, os.path.join(root, "lightning")))
    base = statistics.median(results["raw"])
    lines = [f"\n| loop (CPU, 1 thread, {args.steps} steps) | median µs/step (median of {args.repeats}) | vs raw |",
             "|---|---:|---:|"]
    for name, values in results.items():
        if values:
            med = statistics.median(values)
            lines.append(f"| {name} | {med * 1e6:.1f} | {med / base:.3f}× |")
    print("\n".join(lines), file=sys.stderr if False else sys.stdout)


if __name__ == "__main__":
    main()
