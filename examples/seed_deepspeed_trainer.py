"""The seed document's "Lightning + DeepSpeed" snippet, run with ember (only the import changed):
``L.Trainer(strategy="deepspeed_stage_2")`` fits an ``L.Module``; its checkpoints hold each rank's ZeRO partition.

A small next-token model on a repeating sequence stands in for the user's model. Needs DeepSpeed
(``pip install --no-build-isolation 'ember[deepspeed]'`` after torch). On CPUs:

    ember launch --cpu --num_processes 2 examples/seed_deepspeed_trainer.py
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import ember as L  # was: import lightning as L

VOCAB, CONTEXT = 16, 8


def make_data(n: int = 256) -> TensorDataset:
    """Windows of a repeating sequence: the next token is always predictable from the context."""
    stream = torch.arange(n + CONTEXT) % VOCAB
    windows = torch.stack([stream[i : i + CONTEXT + 1] for i in range(n)])
    return TensorDataset(windows[:, :-1], windows[:, -1])


class NextToken(L.Module):  # was: L.LightningModule
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(torch.nn.Embedding(VOCAB, 32), torch.nn.Flatten(),
                                         torch.nn.Linear(32 * CONTEXT, 64), torch.nn.GELU(), torch.nn.Linear(64, VOCAB))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        loss = F.cross_entropy(self.model(inputs), targets)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> Any:
        return torch.optim.AdamW(self.parameters(), lr=3e-3)


# --- the seed's "DeepSpeed Integration" snippet (plus how long to train) ---------------------------------------
# Lightning + DeepSpeed
trainer = L.Trainer(strategy="deepspeed_stage_2", max_epochs=2, enable_progress_bar=False)

trainer.fit(NextToken(), DataLoader(make_data(), batch_size=8, shuffle=True))
if trainer.is_global_zero:
    print(f"strategy: {trainer.strategy!r}, optimizer steps: {trainer.global_step}, "
          f"train_loss: {float(trainer.callback_metrics['train_loss']):.3f}")
