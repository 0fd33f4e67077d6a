"""The newer callbacks on 2 real processes: `python ddp_callbacks.py OUT` (the Trainer starts the processes).

LearningRateFinder (sweep on both ranks, same suggestion), GradientAccumulationScheduler, ThroughputMonitor,
Timer, and OnExceptionCheckpoint with an error raised on both ranks at the same step (a collective save).
Each rank writes what it saw to OUT/rank{r}.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from ddp_common import body, dataloader, loss_fn

import ember as L
from ember.callbacks import (
    Callback,
    GradientAccumulationScheduler,
    LearningRateFinder,
    OnExceptionCheckpoint,
    ThroughputMonitor,
    Timer,
)

FAIL_AT = (1, 3)  # (epoch, batch): after 3 steps in epoch 0 (accumulating 2 of 6 batches) and 3 in epoch 1


class Net(L.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lr = 0.05
        self.body = body()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if (self.current_epoch, batch_idx) == FAIL_AT:  # not during the LR sweep (epoch 0)
            raise RuntimeError("both ranks fail here")
        return loss_fn(self, batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class Windows(Callback):
    def __init__(self) -> None:
        self.windows: dict[int, list[int]] = {}
        self._micro = 0

    def on_before_backward(self, trainer: Any, pl_module: Any, loss: torch.Tensor) -> None:
        self._micro += 1

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        self.windows.setdefault(trainer.current_epoch, []).append(self._micro)
        self._micro = 0


def main(out: Path) -> None:
    finder = LearningRateFinder(min_lr=1e-3, max_lr=1.0, num_training_steps=15, early_stop_threshold=None)
    monitor = ThroughputMonitor(available_flops=1e9)
    timer = Timer(duration="00:00:10:00", verbose=False)
    windows = Windows()
    model = Net()
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_epochs=3, seed=0, logger=False, log_every_n_steps=1,
        callbacks=[finder, GradientAccumulationScheduler({0: 2, 1: 1}), monitor, timer, windows,
                   OnExceptionCheckpoint(out, "failed")],
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    )
    error = ""
    try:
        trainer.fit(model, dataloader())
    except RuntimeError as err:
        error = str(err)
    assert finder.optimal_lr is not None
    facts = {
        "rank": trainer.global_rank, "error": error, "global_step": trainer.global_step,
        "suggestion": finder.optimal_lr.suggestion(), "losses": finder.optimal_lr.results["loss"],
        "module_lr": model.lr, "windows": windows.windows, "throughput": monitor.metrics,
        "flops_per_batch": monitor.flops_per_batch, "timer_train": timer.time_elapsed(),
    }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(facts))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
