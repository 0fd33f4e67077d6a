"""The seed document's "Accelerate + DeepSpeed" snippet, run with ember (only the import changed): ZeRO stage 2
with 4 micro-batches per optimizer step, in an ordinary training loop.

A small next-token model on a repeating sequence stands in for the user's model. Needs DeepSpeed
(``pip install --no-build-isolation 'ember[deepspeed]'`` after torch). On CPUs:

    ember launch --cpu --num_processes 2 examples/seed_deepspeed_accelerate.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from ember import Accelerator, DeepSpeedPlugin  # was: from accelerate import Accelerator, DeepSpeedPlugin

VOCAB, CONTEXT = 16, 8


def make_data(n: int = 256) -> TensorDataset:
    """Windows of a repeating sequence: the next token is always predictable from the context."""
    stream = torch.arange(n + CONTEXT) % VOCAB
    windows = torch.stack([stream[i : i + CONTEXT + 1] for i in range(n)])
    return TensorDataset(windows[:, :-1], windows[:, -1])


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Embedding(VOCAB, 32), torch.nn.Flatten(), torch.nn.Linear(32 * CONTEXT, 64),
                               torch.nn.GELU(), torch.nn.Linear(64, VOCAB))


# --- the seed's "DeepSpeed Integration" snippet ----------------------------------------------------------------
# Accelerate + DeepSpeed
accelerator = Accelerator(deepspeed_plugin=DeepSpeedPlugin(
    zero_stage=2,
    gradient_accumulation_steps=4,
))

model = make_model()
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
dataloader = DataLoader(make_data(), batch_size=8, shuffle=True)
model, optimizer, dataloader = accelerator.prepare(model, optimizer, dataloader)

losses = []
for _epoch in range(2):
    for inputs, targets in dataloader:
        with accelerator.accumulate(model):
            loss = F.cross_entropy(model(inputs), targets)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
        losses.append(loss.item())
    accelerator.save_state("checkpoint/")

accelerator.print(
    f"distributed: {accelerator.distributed_type}, ZeRO stage: {accelerator.strategy.stage}, "
    f"accumulation: {accelerator.gradient_accumulation_steps}, optimizer steps: {accelerator.step}, "
    f"loss: {sum(losses[:4]) / 4:.3f} -> {sum(losses[-4:]) / 4:.3f}"
)
accelerator.end_training()
