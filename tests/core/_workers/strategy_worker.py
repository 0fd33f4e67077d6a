"""Train the same model with a given strategy through both layers; write the final weights per rank.

Usage: ``strategy_worker.py OUT_DIR STRATEGY``. Imports the test-only strategy file, which registers itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "_strategies"))
import allreduce_strategy  # noqa: E402, F401  (registers "allreduce_test")
from common import BATCH, LR, make_data, make_model  # noqa: E402

import ember as L  # noqa: E402
from ember import Accelerator  # noqa: E402


def with_accelerator(strategy: str) -> dict[str, torch.Tensor]:
    acc = Accelerator(cpu=True, strategy=strategy, gradient_accumulation_steps=2, verbose=False)
    x, y = make_data()
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    model, opt, loader = acc.prepare(model, opt, DataLoader(TensorDataset(x, y), batch_size=BATCH))
    for xb, yb in loader:
        with acc.accumulate(model):
            acc.backward(F.mse_loss(model(xb), yb))
            opt.step()
            opt.zero_grad()
    assert acc.strategy.name == strategy, acc.strategy.name
    state = {f"acc.{k}": v.detach().clone() for k, v in acc.get_state_dict(model).items()}
    acc.end_training()
    return state


class Net(L.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = make_model()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=LR)


def with_trainer(strategy: str) -> dict[str, torch.Tensor]:
    x, y = make_data()
    module = Net()
    trainer = L.Trainer(accelerator="cpu", strategy=strategy, max_epochs=1, accumulate_grad_batches=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=BATCH))
    assert trainer.strategy.name == strategy, trainer.strategy.name
    return {f"trainer.{k}": v.detach().clone() for k, v in module.net.state_dict().items()}


if __name__ == "__main__":
    out, strategy = Path(sys.argv[1]), sys.argv[2]
    state = {**with_trainer(strategy), **with_accelerator(strategy)}
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else int(__import__("os").environ.get("RANK", 0))
    out.mkdir(parents=True, exist_ok=True)
    torch.save(state, out / f"rank{rank}.pt")
