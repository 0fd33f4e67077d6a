"""The Accelerator-layer DDP loop (run with `ember launch --cpu --num_processes 2`): the reference result."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from ddp_common import ACCELERATOR, EPOCHS, LR, body, dataloader, loss_fn
from safetensors.torch import save_file

from ember import Accelerator


def main(out: Path) -> None:
    model = body()
    accelerator = Accelerator(cpu=ACCELERATOR == "cpu", seed=0, strategy="ddp")
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    model, optimizer, loader = accelerator.prepare(model, optimizer, dataloader())
    for _ in range(EPOCHS):
        for batch in loader:
            with accelerator.accumulate(model):
                loss = loss_fn(model, batch)
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
    if accelerator.is_main_process:
        state = accelerator.unwrap_model(model).state_dict()
        save_file({k: v.contiguous() for k, v in state.items()}, str(out / "params.safetensors"))
    # drop the DDP wrapper before the group closes: a live DDP reducer at interpreter exit can abort under gloo
    del model, optimizer, loader
    accelerator.free_memory()
    accelerator.end_training()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
