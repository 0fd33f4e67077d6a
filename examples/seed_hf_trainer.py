"""The seed's Hugging Face Trainer job, done with ember.Trainer: a transformers model and a `datasets`-style dataset.

The seed::

    from transformers import Trainer, TrainingArguments
    trainer = Trainer(model=model, args=TrainingArguments(output_dir="./output", fsdp="full_shard", bf16=True),
                      train_dataset=dataset)
    trainer.train()

In ember the same job reads::

    module = L.Module.wrap(model, optimizer=lambda params: torch.optim.AdamW(params, lr=5e-5), batch_size=8)
    trainer = L.Trainer(default_root_dir="./output", strategy="fsdp", precision="bf16-mixed")
    trainer.fit(module, dataset)

The dataset goes straight to ``fit``, as ``train_dataset=`` goes to the HF Trainer: the wrapped module builds a
shuffled loader of ``batch_size`` rows (HF's ``per_device_train_batch_size``, 8 by default in both) and collates
them as the HF Trainer does for a causal LM: the columns the model's ``forward`` does not take are dropped (HF's
``remove_unused_columns``, e.g. a ``text`` column), ``input_ids`` are padded to the longest sequence of the batch,
``attention_mask`` is built, and ``labels`` are the inputs with ``-100`` at the padding (HF's
``DataCollatorForLanguageModeling(mlm=False)``), so padding never counts in the loss. The model shifts the labels
itself, as every HF causal LM does. A DataLoader of your own still works in its place.

The dataset is a ``datasets.Dataset`` when the ``datasets`` package is installed, else a plain list of dicts.
The model is a tiny GPT-2 built from a config: nothing is downloaded. Runs on CPU in seconds:
    python examples/seed_hf_trainer.py

``strategy="fsdp"`` is the seed's ``fsdp="full_shard"`` (FSDP2; one process here, or ``--devices 2``):
    python examples/seed_hf_trainer.py --devices 2
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from transformers import GPT2Config, GPT2LMHeadModel

import ember as L


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
    module = L.Module.wrap(model, optimizer=lambda params: torch.optim.AdamW(params, lr=3e-3), batch_size=8)
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
    trainer.fit(module, dataset)       # train_dataset=dataset
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
