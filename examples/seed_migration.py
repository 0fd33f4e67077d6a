"""The seed document's plain-PyTorch snippets and their migrations, run with ember (only the import changed).

* "Standard PyTorch" and "With Accelerate - same structure, +3 lines" (the Accelerate philosophy),
* "Migration Guide: PyTorch to Accelerate" (before / after),
* "Migration Guide: PyTorch to Lightning" (``MyModule`` + ``L.Trainer``),
* "Accelerate is ideal for quick experiments".

Each pair trains the same tiny GPT-2 (built from a config: no download) on the same batches from the same seed,
so the "after" must give exactly the losses of the "before" on one CPU process — the migration changes where
the code lives, not the maths. ``python examples/seed_migration.py`` prints both loss lists for each pair.

What differs from the seed, and why: ``torch.device("cuda")`` falls back to the CPU when there is no GPU;
the seed's loops never call ``optimizer.zero_grad()`` (so gradients add up across steps) — kept as written;
``L.Trainer()`` trains for 1000 epochs by default (as Lightning's), so ``max_epochs=1`` is passed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim import Adam
from torch.utils.data import DataLoader, Dataset
from transformers import GPT2Config, GPT2LMHeadModel

import ember as L
from ember import Accelerator  # was: from accelerate import Accelerator

#: dropout off, so the comparison does not depend on how many random numbers each layer draws
NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "bos_token_id": 0, "eos_token_id": 0}


class Tokens(Dataset[dict[str, torch.Tensor]]):
    def __init__(self, n: int = 32, length: int = 16) -> None:
        ids = torch.randint(0, 64, (n, length), generator=torch.Generator().manual_seed(0))
        self.items = [{"input_ids": x, "labels": x} for x in ids]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.items[i]


class Model(torch.nn.Module):
    """``Model()`` of the seed: ``model(batch).loss``."""

    def __init__(self) -> None:
        super().__init__()
        self.lm = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2, **NO_DROPOUT))

    def forward(self, batch: dict[str, torch.Tensor]) -> Any:
        return self.lm(**batch)


def tiny_lm() -> GPT2LMHeadModel:
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2, **NO_DROPOUT))


def standard_pytorch() -> list[float]:
    torch.manual_seed(0)
    dataloader = DataLoader(Tokens(), batch_size=8)
    losses = []
    # Standard PyTorch
    model = Model()
    optimizer = Adam(model.parameters())
    for batch in dataloader:
        loss = model(batch).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def with_accelerate() -> list[float]:
    torch.manual_seed(0)
    dataloader = DataLoader(Tokens(), batch_size=8)
    losses = []
    model = Model()
    optimizer = Adam(model.parameters())
    # With Accelerate - same structure, +3 lines
    accelerator = Accelerator()
    model, optimizer, dataloader = accelerator.prepare(model, optimizer, dataloader)
    for batch in dataloader:
        loss = model(batch).loss
        accelerator.backward(loss)
        optimizer.step()
        losses.append(loss.item())
    return losses


def pytorch_before() -> list[float]:
    torch.manual_seed(0)
    model, dataloader = tiny_lm(), DataLoader(Tokens(), batch_size=8)
    optimizer = torch.optim.AdamW(model.parameters())
    losses = []
    # Before
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # seed: torch.device("cuda")
    model = model.to(device)
    for batch in dataloader:
        batch = {k: v.to(device) for k, v in batch.items()}
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def accelerate_after() -> list[float]:
    torch.manual_seed(0)
    model, dataloader = tiny_lm(), DataLoader(Tokens(), batch_size=8)
    optimizer = torch.optim.AdamW(model.parameters())
    losses = []
    # After
    accelerator = Accelerator()
    model, optimizer, dataloader = accelerator.prepare(model, optimizer, dataloader)
    for batch in dataloader:
        loss = model(**batch).loss
        accelerator.backward(loss)
        optimizer.step()
        losses.append(loss.item())
    return losses


# Restructure into LightningModule
class MyModule(L.LightningModule):
    def __init__(self) -> None:  # the seed's MyModule has no __init__; its self.model must come from somewhere
        super().__init__()
        self.model = tiny_lm()
        self.losses: list[float] = []

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.model(**batch).loss
        self.losses.append(float(loss.detach()))  # not in the seed: to compare with the plain loop
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters())


def plain_loop_with_zero_grad() -> list[float]:
    """What Lightning's loop does per step (zero_grad included): the reference for the Trainer."""
    torch.manual_seed(0)
    model, dataloader = tiny_lm(), DataLoader(Tokens(), batch_size=8)
    optimizer = torch.optim.AdamW(model.parameters())
    losses = []
    for batch in dataloader:
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def lightning_after(root_dir: str = "runs/seed_migration") -> list[float]:
    torch.manual_seed(0)
    module, dataloader = MyModule(), DataLoader(Tokens(), batch_size=8)
    # Replace training loop with Trainer
    trainer = L.Trainer(max_epochs=1, default_root_dir=root_dir, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, dataloader)
    return module.losses


def quick_experiment() -> int:
    """ "Accelerate is ideal for quick experiments": prepare, then the existing loop works almost unchanged."""
    model = tiny_lm()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    dataloader = DataLoader(Tokens(), batch_size=8)
    accelerator = Accelerator()
    model, optimizer, dataloader = accelerator.prepare(model, optimizer, dataloader)
    # Your existing loop works almost unchanged
    for batch in dataloader:
        accelerator.backward(model(**batch).loss)
        optimizer.step()
        optimizer.zero_grad()
    return accelerator.step


if __name__ == "__main__":
    for name, before, after in (("philosophy", standard_pytorch, with_accelerate),
                                ("to Accelerate", pytorch_before, accelerate_after),
                                ("to Lightning", plain_loop_with_zero_grad, lightning_after)):
        b, a = before(), after()
        print(f"{name}: before {[round(x, 4) for x in b]}\n{'':>{len(name) + 2}}after  {[round(x, 4) for x in a]}"
              f"  identical: {b == a}")
    print(f"quick experiment: {quick_experiment()} optimizer steps")
