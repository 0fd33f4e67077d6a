"""Lightning idioms of the example scripts, written as Lightning users write them (imports from ``ember``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from trainer_helpers import Regressor, loader, quiet_trainer

import ember as L


class EpochRecorder(L.Callback):
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def on_predict_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        super().on_predict_epoch_start(trainer, pl_module)  # the base class has the hook, as Lightning's does
        self.calls.append(("start", len(self.calls)))

    def on_predict_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        super().on_predict_epoch_end(trainer, pl_module)
        self.calls.append(("end", len(self.calls)))


class Predicting(Regressor):
    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return self.net(batch[0])


def test_predict_epoch_hooks_of_a_callback_are_called_once_each(tmp_path: Path) -> None:
    recorder = EpochRecorder()
    trainer = quiet_trainer(tmp_path, callbacks=[recorder])
    predictions = trainer.predict(Predicting(), loader(n=12, batch_size=4))
    assert len(predictions) == 3
    assert recorder.calls == [("start", 0), ("end", 1)]
