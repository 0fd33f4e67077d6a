"""The seed's FSDP job: ``ember launch --config_file seed_fsdp_config.yaml seed_fsdp_llama.py``.

The script is the seed's Accelerate loop, unchanged but for the import; the YAML chooses FSDP, wraps every
``LlamaDecoderLayer`` and sets bf16. The model is a tiny Llama built from a config (nothing is downloaded).

    ember launch --config_file examples/seed_fsdp_config.yaml --cpu examples/seed_fsdp_llama.py
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader
from transformers import LlamaConfig, LlamaForCausalLM

from ember import Accelerator


def dataset(n: int = 32, length: int = 16, vocab: int = 64) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (n, length), generator=g)
    return [{"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x} for x in ids]


def main() -> None:
    accelerator = Accelerator()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    dataloader = DataLoader(dataset(), batch_size=4)
    model, optimizer, dataloader = accelerator.prepare(model, optimizer, dataloader)
    for _epoch in range(2):  # the seed: `for epoch in range(num_epochs)`
        model.train()
        for step, batch in enumerate(dataloader):
            with accelerator.accumulate(model):
                outputs = model(**batch)
                loss = outputs.loss
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
            if step % 100 == 0:
                accelerator.print(f"Step {step}, Loss: {loss.item()}")
    accelerator.save_state("checkpoint/")
    blocks = [type(m).__name__ for m in model.modules() if type(m).__name__.startswith("FSDP")]
    accelerator.print(f"distributed_type={accelerator.distributed_type} mixed_precision={accelerator.mixed_precision} "
                      f"sharded_blocks={blocks.count('FSDPLlamaDecoderLayer')} steps={accelerator.step}")
    accelerator.print("parameter dtypes:", sorted({str(p.dtype) for p in model.parameters()}))
    accelerator.end_training()


if __name__ == "__main__":
    main()
