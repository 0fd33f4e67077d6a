"""The seed's Hugging Face Trainer job, done with ember.Trainer: a transformers model and a `datasets`-style dataset.

The seed::

    from transformers import Trainer, TrainingArguments
    trainer = Trainer(model=model, args=TrainingArguments(output_dir="./output", fsdp="full_shard", bf16=True),
                      train_dataset=dataset)
    trainer.train()

In ember the same job reads::

    module = L.Module.wrap(model, optimizer=lambda params: torch.optim.AdamW(params, lr=5e-5))
    trainer = L.Trainer(default_root_dir="./output", strategy="fsdp", precision="bf16-mixed")
    trainer.fit(module, DataLoader(dataset, batch_size=8, shuffle=True, collate_fn=CausalLMCollator(model)))

``CausalLMCollator`` does what the HF Trainer does with a dataset of dicts: it drops the columns the model's
``forward`` does not take (HF's ``remove_unused_columns``, e.g. a ``text`` column), pads ``input_ids`` to the
longest sequence of the batch, builds ``attention_mask``, and sets ``labels`` to the inputs with ``-100`` at the
padding (HF's ``DataCollatorForLanguageModeling(mlm=False)``), so padding never counts in the loss. The model
shifts the labels itself, as every HF causal LM does.

The dataset is a ``datasets.Dataset`` when the ``datasets`` package is installed, else a plain list of dicts —
the Trainer takes either through the DataLoader. The model is a tiny GPT-2 built from a config: nothing is
downloaded. Runs on CPU in seconds:  python examples/seed_hf_trainer.py

``strategy="fsdp"`` is the seed's ``fsdp="full_shard"`` (FSDP2; one process here, or ``--devices 2``):
    python examples/seed_hf_trainer.py --devices 2
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import GPT2Config, GPT2LMHeadModel

import ember as L

IGNORE_INDEX = -100  # what HF losses skip


class CausalLMCollator:
    """Batch a list of ``{"input_ids": [...], ...}`` rows the way the HF Trainer does for a causal LM.

    Args:
        model: The model whose ``forward`` signature decides which columns are kept.
        pad_token_id: Id written into padded ``input_ids`` (masked out by ``attention_mask``).
    """

    def __init__(self, model: torch.nn.Module, pad_token_id: int = 0) -> None:
        params = inspect.signature(model.forward).parameters
        self.columns = {name for name in params if name not in ("self", "kwargs")}
        self.pad_token_id = pad_token_id

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        ids = [torch.as_tensor(row["input_ids"], dtype=torch.long) for row in rows]
        longest = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), longest), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(ids), longest), dtype=torch.long)
        for i, x in enumerate(ids):
            input_ids[i, : len(x)] = x
            attention_mask[i, : len(x)] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "labels" in rows[0]:  # given labels are padded with -100
            labels = torch.full_like(input_ids, IGNORE_INDEX)
            for i, row in enumerate(rows):
                given = torch.as_tensor(row["labels"], dtype=torch.long)
                labels[i, : len(given)] = given
        else:
            labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
        batch["labels"] = labels
        return {k: v for k, v in batch.items() if k in self.columns}


def make_dataset(n: int = 96, seed: int = 0) -> Any:
    """Rows of counting sequences of random length (learnable, so the loss falls), with a text column.

    A ``datasets.Dataset`` when ``datasets`` is installed, else a list of dicts.
    """
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        length = int(torch.randint(6, 17, (1,), generator=g))
        start = int(torch.randint(1, 40, (1,), generator=g))
        ids = [(start + i) % 63 + 1 for i in range(length)]  # ids 1..63; 0 is padding
        rows.append({"input_ids": ids, "text": " ".join(map(str, ids))})
    try:
        import datasets
    except ImportError:
        return rows
    return datasets.Dataset.from_list(rows)


def tiny_gpt2() -> GPT2LMHeadModel:
    config = GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2, bos_token_id=0,
                        eos_token_id=0, pad_token_id=0)
    return GPT2LMHeadModel(config)


def train(output_dir: str = "./output", strategy: str = "fsdp", devices: int | str = "auto",
          max_epochs: int = 4, quiet: bool = False) -> tuple[L.Trainer, L.Module]:
    torch.manual_seed(0)
    model = tiny_gpt2()
    dataset = make_dataset()
    module = L.Module.wrap(model, optimizer=lambda params: torch.optim.AdamW(params, lr=3e-3))
    trainer = L.Trainer(
        default_root_dir=output_dir,   # output_dir="./output"
        strategy=strategy,             # fsdp="full_shard" → strategy="fsdp"
        devices=devices,
        precision="bf16-mixed",        # bf16=True
        max_epochs=max_epochs,
        log_every_n_steps=4,
        enable_progress_bar=not quiet,
        enable_model_summary=not quiet,
    )
    loader = DataLoader(dataset, batch_size=8, shuffle=True, collate_fn=CausalLMCollator(model))
    trainer.fit(module, loader)
    return trainer, module


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="./output")
    parser.add_argument("--strategy", default="fsdp", help="fsdp (the seed's choice), ddp or auto")
    parser.add_argument("--devices", default="auto")
    parser.add_argument("--max-epochs", type=int, default=4)
    args = parser.parse_args()
    devices = int(args.devices) if args.devices.isdigit() else args.devices
    trainer, _ = train(args.output_dir, args.strategy, devices, args.max_epochs)
    if trainer.is_global_zero:
        print(f"trained {trainer.global_step} steps; train loss {float(trainer.callback_metrics['train_loss']):.3f}")
