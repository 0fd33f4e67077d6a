"""Regression tests for defects in the Trainer layer (issue 7, defects 2 and 6), each named after its defect."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader
from trainer_helpers import SCRIPTS, ember_launch, quiet_trainer, run

import ember as L

LR = 0.1


class SkipsAtBoundary(L.LightningModule):
    """w starts at 0; the loss of batch x is (x @ w - 1)^2; training_step skips (returns None) batch 1, which
    closes the first accumulation window of 2."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(2))
        self.steps_seen: list[int] = []

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
        if batch_idx == 1:
            return None
        return (batch @ self.w - 1).pow(2).mean()

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        self.steps_seen.append(self.trainer.global_step)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=LR)


def expected_lightning_weights(batches: list[torch.Tensor]) -> torch.Tensor:
    """Lightning's result, by hand: each loss is divided by K=2; the skipped batch adds no gradient, its window
    still steps with what batch 0 accumulated; the next window starts from zero gradients."""
    w = torch.zeros(2, requires_grad=True)
    opt = torch.optim.SGD([w], lr=LR)
    for window in ([batches[0]], [batches[2], batches[3]]):
        for x in window:
            ((x @ w - 1).pow(2).mean() / 2).backward()
        opt.step()
        opt.zero_grad()
    return w.detach()


def test_defect6_none_at_accumulation_boundary_steps_the_window_and_leaks_nothing(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    data = torch.randn(8, 2, generator=g)
    batches = list(data.split(2))
    model = SkipsAtBoundary()
    trainer = quiet_trainer(tmp_path, max_epochs=1, accumulate_grad_batches=2)
    trainer.fit(model, DataLoader(data, batch_size=2))
    assert trainer.global_step == 2 and model.steps_seen == [0, 1]  # both windows stepped
    assert torch.allclose(model.w.detach(), expected_lightning_weights(batches), rtol=0, atol=1e-6)


class SkipsAWholeWindow(SkipsAtBoundary):
    def training_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
        return None if batch_idx in (0, 1) else super().training_step(batch, batch_idx)


def test_defect6_a_window_of_skipped_batches_is_dropped(tmp_path: Path) -> None:
    data = torch.randn(8, 2, generator=torch.Generator().manual_seed(1))
    model = SkipsAWholeWindow()
    trainer = quiet_trainer(tmp_path, max_epochs=1, accumulate_grad_batches=2)
    trainer.fit(model, DataLoader(data, batch_size=2))
    assert trainer.global_step == 1  # no gradient at all in window 0: no optimizer step, no scheduler step
    w = torch.zeros(2, requires_grad=True)
    for x in data.split(2)[2:]:
        ((x @ w - 1).pow(2).mean() / 2).backward()
    assert w.grad is not None
    assert torch.allclose(model.w.detach(), -LR * w.grad, rtol=0, atol=1e-6)


@pytest.mark.timeout(240)
def test_defect2_sync_dist_reduces_by_name_not_by_logging_order(tmp_path: Path) -> None:
    """Rank 0 logs a then b, rank 1 logs b then a (2 gloo processes): a and b are each reduced with themselves;
    then rank 1 logs a name rank 0 does not: both ranks raise an error that names it."""
    run(ember_launch("--cpu", "--num_processes", "2", SCRIPTS / "ddp_logging.py", tmp_path))
    facts = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for fact in facts:
        # a: rank 0 logs 1, rank 1 logs 3 → mean 2, max 3; b: rank 0 logs 10, rank 1 logs 30 → mean 20
        assert fact["epoch"] == {"a": 2.0, "b": 20.0, "a_max": 3.0}
        assert fact["step"] == {"a": 2.0, "b": 20.0, "a_max": 3.0}
        assert "only_rank1" in fact["error"] and "rank 0: [" in fact["error"] and "rank 1: [" in fact["error"]
    assert "sync_dist" in facts[0]["warnings"] and "'local'" in facts[0]["warnings"]  # epoch value, no sync_dist
    assert facts[1]["warnings"] == ""  # rank 0 says it, once
