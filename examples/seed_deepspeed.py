"""The seed's "DeepSpeed Integration" snippets, for both layers — ready for when ember's DeepSpeed strategy lands.

    # Accelerate + DeepSpeed
    accelerator = Accelerator(deepspeed_plugin=DeepSpeedPlugin(zero_stage=2, gradient_accumulation_steps=4))
    # Lightning + DeepSpeed
    trainer = L.Trainer(strategy="deepspeed_stage_2")

Run on 2 CPU processes (DeepSpeed's CPU accelerator) once available:
    DS_ACCELERATOR=cpu ember launch --num_processes 2 --cpu examples/seed_deepspeed.py
Until then the script says what is missing and exits with status 3 (it is not part of the test suite).
"""

from __future__ import annotations

import sys

import torch
from torch.utils.data import DataLoader

import ember
import ember as L

DeepSpeedPlugin = getattr(ember, "DeepSpeedPlugin", None)  # was: from accelerate import DeepSpeedPlugin
if DeepSpeedPlugin is None:
    print("ember has no DeepSpeed strategy yet (ember.DeepSpeedPlugin is missing): nothing to run.", file=sys.stderr)
    raise SystemExit(3)

from seed_accelerate import MyModel, TokenDataset  # noqa: E402  (the same tiny GPT-2 and data)

# Accelerate + DeepSpeed
accelerator = ember.Accelerator(deepspeed_plugin=DeepSpeedPlugin(
    zero_stage=2,
    gradient_accumulation_steps=4,
))
model = MyModel()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
model, optimizer, dataloader = accelerator.prepare(model, optimizer, DataLoader(TokenDataset(), batch_size=8))
for batch in dataloader:
    with accelerator.accumulate(model):
        accelerator.backward(model(**batch).loss)
        optimizer.step()
        optimizer.zero_grad()
accelerator.print(f"Accelerator + DeepSpeed ZeRO-2: {accelerator.step} optimizer steps")

# Lightning + DeepSpeed
trainer = L.Trainer(strategy="deepspeed_stage_2", max_epochs=1)
trainer.fit(L.Module.wrap(MyModel(), optimizer=lambda p: torch.optim.AdamW(p, lr=1e-4)),
            DataLoader(TokenDataset(), batch_size=8))
