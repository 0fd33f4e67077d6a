"""sync_dist on 2 real processes: `ember launch --cpu --num_processes 2 ddp_logging.py OUT`.

Fit 1: rank 0 logs ``a`` then ``b``, rank 1 logs ``b`` then ``a`` (values differ per rank) with sync_dist, plus
an epoch value without sync_dist. Fit 2: rank 1 also logs ``only_rank1``; both ranks must raise, naming it.
Each rank writes what it saw to OUT/rank{r}.json.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

import ember as L


class Logs(L.LightningModule):
    def __init__(self, extra: bool = False) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(2))
        self.extra = extra

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        rank = self.global_rank
        a, b = torch.tensor(1.0 + 2 * rank), torch.tensor(10.0 + 20 * rank)
        order = [("a", a), ("b", b)] if rank == 0 else [("b", b), ("a", a)]
        for name, value in order:
            self.log(name, value, on_step=True, on_epoch=True, sync_dist=True)
        self.log("a_max", a, on_step=True, on_epoch=True, sync_dist=True, reduce_fx="max")
        self.log("local", a, on_step=False, on_epoch=True)
        if self.extra and rank == 1:
            self.log("only_rank1", a, sync_dist=True)
        return (batch @ self.w - 1).pow(2).mean()

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def trainer() -> L.Trainer:
    return L.Trainer(accelerator="cpu", max_epochs=1, logger=False, log_every_n_steps=1, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False)


def main(out: Path) -> None:
    data = DataLoader(torch.ones(8, 2), batch_size=2)
    first = trainer()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first.fit(Logs(), data)
    metrics = {k: float(v) for k, v in first.callback_metrics.items()}
    error = ""
    try:
        trainer().fit(Logs(extra=True), data)
    except L.EmberConfigError as err:
        error = str(err)
    facts = {
        "epoch": {k: metrics[f"{k}_epoch"] for k in ("a", "b", "a_max")},
        "step": {k: metrics[f"{k}_step"] for k in ("a", "b", "a_max")},
        "error": error,
        "warnings": " ".join(str(w.message) for w in caught if "sync_dist" in str(w.message)),
    }
    (out / f"rank{first.global_rank}.json").write_text(json.dumps(facts))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
