"""`Trainer(accelerator="cpu", devices=2, strategy="ddp")` on the same data and seed as ddp_accelerator.py.

Run as `python ddp_trainer.py OUT` (the Trainer starts the 2 processes itself) or under
`ember launch --cpu --num_processes 2 ddp_trainer.py OUT` (the Trainer joins them). Also logs rank-dependent
values to check sync_dist across real ranks.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from ddp_common import ACCELERATOR, EPOCHS, LR, body, dataloader, loss_fn
from safetensors.torch import save_file

import ember as L
from ember.callbacks import EarlyStopping, ModelCheckpoint
from ember.loggers import CSVLogger


class Net(L.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = body()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = loss_fn(self, batch)
        value = float(self.global_rank + 1)  # rank 0 logs 1, rank 1 logs 2
        self.log("synced_mean", value, on_step=False, on_epoch=True, sync_dist=True, batch_size=self.global_rank + 1)
        self.log("local_mean", value, on_step=False, on_epoch=True)
        self.log("synced_max", value, on_step=False, on_epoch=True, sync_dist=True, reduce_fx="max")
        self.log("synced_sum", value, on_step=False, on_epoch=True, sync_dist=True, reduce_fx="sum")
        self.log("step_synced", float(self.global_rank), sync_dist=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=LR)


def main(out: Path) -> None:
    model = Net()
    trainer = L.Trainer(
        accelerator=ACCELERATOR, devices=2, strategy="ddp", max_epochs=EPOCHS, seed=0,
        logger=CSVLogger(out, name="csv", version=0), log_every_n_steps=2,
        callbacks=[ModelCheckpoint(dirpath=out / "ckpt", monitor="synced_mean", mode="max", save_last=True),
                   EarlyStopping(monitor="synced_mean", mode="max", patience=5)],
        enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(model, dataloader())
    facts = {"rank": trainer.global_rank, "world_size": trainer.world_size, "global_step": trainer.global_step,
             "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()}}
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(facts))
    if trainer.is_global_zero:
        state = model.body.state_dict()
        save_file({k: v.contiguous() for k, v in state.items()}, str(out / "params.safetensors"))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
