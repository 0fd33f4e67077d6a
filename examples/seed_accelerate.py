"""The Accelerate snippets of the seed document, run with ember (only the import changed).

A tiny GPT-2 built from a config (no download) stands in for ``MyModel``; the data is random token ids.
Runs on CPU in seconds:  python examples/seed_accelerate.py   (or under `ember launch --num_processes 2`).
"""

from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader, Dataset
from transformers import GPT2Config, GPT2LMHeadModel, get_linear_schedule_with_warmup

from ember import Accelerator  # was: from accelerate import Accelerator

os.environ.setdefault("WANDB_MODE", "offline")  # W&B without network access


class TokenDataset(Dataset[dict[str, torch.Tensor]]):
    def __init__(self, n: int = 64, length: int = 32) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 128, (n, length), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = self.ids[i]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def MyModel() -> GPT2LMHeadModel:
    return GPT2LMHeadModel(GPT2Config(vocab_size=128, n_positions=64, n_embd=32, n_layer=2, n_head=2))


dataset = TokenDataset()
num_epochs = 2

# --- "Basic Setup" -----------------------------------------------------------------------------------
accelerator = Accelerator(
    mixed_precision="bf16",
    gradient_accumulation_steps=4,
    log_with="wandb",
)
model = MyModel()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
scheduler = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=2, num_training_steps=8)
dataloader = DataLoader(dataset, batch_size=8)
# Prepare everything
model, optimizer, dataloader, scheduler = accelerator.prepare(
    model, optimizer, dataloader, scheduler
)

# --- "Training Loop" ---------------------------------------------------------------------------------
for epoch in range(num_epochs):  # noqa: B007  (the seed's loop, verbatim)
    model.train()
    for step, batch in enumerate(dataloader):
        with accelerator.accumulate(model):
            outputs = model(**batch)
            loss = outputs.loss
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        if step % 100 == 0:
            accelerator.print(f"Step {step}, Loss: {loss.item()}")
    # Save checkpoint
    accelerator.save_state("checkpoint/")

accelerator.print(f"optimizer steps: {accelerator.step}, lr: {scheduler.get_last_lr()[0]:.2e}")
