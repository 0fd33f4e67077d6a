"""self.log semantics: per-hook defaults, _step/_epoch names, batch-size weighting, reduce_fx, host reads."""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from trainer_helpers import Regressor, loader, quiet_trainer

from ember import EmberConfigError
from ember.callbacks import Callback
from ember.loggers import CSVLogger


def read_csv(logger: CSVLogger) -> list[dict[str, str]]:
    with open(Path(logger.log_dir) / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


class Suffixes(Regressor):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log("both", loss, on_step=True, on_epoch=True)
        self.log("step_only", loss)  # training_step default: on_step=True, on_epoch=False
        self.log("epoch_only", loss, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_default", self.loss(batch))  # validation default: on_step=False, on_epoch=True


def test_step_and_epoch_names_follow_lightning(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, name="csv")
    trainer = quiet_trainer(tmp_path, max_epochs=2, logger=logger, log_every_n_steps=1)
    trainer.fit(Suffixes(), loader(n=12), loader(n=8, seed=1))
    assert set(trainer.callback_metrics) == {"both", "both_step", "both_epoch", "step_only", "epoch_only",
                                             "val_default"}
    assert set(trainer.logged_metrics) == {"both_step", "both_epoch", "step_only", "epoch_only", "val_default"}
    assert set(trainer.progress_bar_metrics) == {"epoch_only"}
    assert torch.equal(trainer.callback_metrics["both"], trainer.callback_metrics["both_epoch"])
    rows = read_csv(logger)
    assert "both" not in rows[0] and {"both_step", "both_epoch", "step_only", "epoch"} <= set(rows[0])
    step_rows = [r for r in rows if r["step_only"]]
    assert [int(r["step"]) for r in step_rows] == list(range(6))  # log_every_n_steps=1: every optimizer step
    epoch_rows = [r for r in rows if r["both_epoch"]]
    assert [(int(r["step"]), int(float(r["epoch"]))) for r in epoch_rows] == [(3, 0), (6, 1)]
    assert len([r for r in rows if r["val_default"]]) == 2


class Weighted(Regressor):
    """Logs batch_idx as the value: the epoch mean must weight it by the batch size."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        value = torch.tensor(float(batch_idx))
        self.log("inferred", value, on_step=False, on_epoch=True)
        self.log("explicit", value, on_step=False, on_epoch=True, batch_size=batch_idx + 1)
        self.log("total", value + 1, on_step=False, on_epoch=True, reduce_fx="sum")
        self.log("largest", value + 1, on_step=False, on_epoch=True, reduce_fx="max")
        self.log("smallest", value + 1, on_step=False, on_epoch=True, reduce_fx=torch.min)
        self.log("python_number", 2.0 * batch_idx, on_step=False, on_epoch=True)
        return self.loss(batch)


def test_epoch_mean_is_weighted_by_batch_size_and_reduce_fx_applies(tmp_path: Path) -> None:
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(Weighted(), loader(n=10, batch_size=4))  # batches of 4, 4, 2
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert metrics["inferred"] == pytest.approx((0 * 4 + 1 * 4 + 2 * 2) / 10)  # 0.8, not the unweighted 1.0
    assert metrics["explicit"] == pytest.approx((0 * 1 + 1 * 2 + 2 * 3) / 6)
    assert metrics["total"] == 6.0 and metrics["largest"] == 3.0 and metrics["smallest"] == 1.0
    assert metrics["python_number"] == pytest.approx(1.6)


def test_loggers_get_one_host_read_per_interval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No .item() in the loop; every log interval reads all its tensors with one .tolist()."""
    counts = {"item": 0, "tolist": 0}

    class Count(Callback):
        def on_train_start(self, trainer: Any, module: Any) -> None:
            item, tolist = torch.Tensor.item, torch.Tensor.tolist

            def from_ember() -> bool:  # torch's DataLoader reads its CPU seed with .item(): not ours
                return f"{os.sep}ember{os.sep}" in sys._getframe(2).f_code.co_filename

            def counted_item(t: torch.Tensor) -> Any:
                counts["item"] += from_ember()
                return item(t)

            def counted_tolist(t: torch.Tensor) -> Any:
                counts["tolist"] += from_ember()
                return tolist(t)

            monkeypatch.setattr(torch.Tensor, "item", counted_item)
            monkeypatch.setattr(torch.Tensor, "tolist", counted_tolist)

        def on_train_end(self, trainer: Any, module: Any) -> None:
            monkeypatch.undo()

    class Many(Regressor):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = self.loss(batch)
            self.log_dict({"a": loss, "b": loss * 2, "c": loss + 1}, on_step=True, on_epoch=True)
            return loss

    logger = CSVLogger(tmp_path, name="csv")
    trainer = quiet_trainer(tmp_path, max_epochs=1, logger=logger, log_every_n_steps=5, callbacks=[Count()])
    trainer.fit(Many(), loader(n=40, batch_size=4))  # 10 steps: intervals after steps 5 and 10, then epoch end
    assert counts == {"item": 0, "tolist": 3}
    rows = read_csv(logger)
    assert [int(r["step"]) for r in rows if r["a_step"]] == [4, 9]


def test_logging_in_a_hook_without_meaning_is_an_error(tmp_path: Path) -> None:
    class LogsInFitStart(Regressor):
        def on_fit_start(self) -> None:
            self.log("x", 1.0)

    with pytest.raises(EmberConfigError, match=r"self\.log\('x'\) in on_fit_start"):
        quiet_trainer(tmp_path, max_epochs=1).fit(LogsInFitStart(), loader())

    class StepInEpochHook(Regressor):
        def on_train_epoch_end(self) -> None:
            self.log("y", 1.0, on_step=True)

    with pytest.raises(EmberConfigError, match="only on_epoch=True"):
        quiet_trainer(tmp_path, max_epochs=1).fit(StepInEpochHook(), loader())


def test_validate_and_test_return_epoch_metrics(tmp_path: Path) -> None:
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    module = Regressor()
    trainer.fit(module, loader())
    (val,) = trainer.validate(module, loader(n=8, seed=1), verbose=False)
    (test,) = trainer.test(module, [loader(n=8, seed=1)], verbose=False)
    assert set(val) == {"val_loss"} and set(test) == {"test_loss"}
    assert val["val_loss"] == pytest.approx(test["test_loss"])  # same data, same weights
    with pytest.raises(EmberConfigError, match="does not take `dataloader_idx`"):
        trainer.validate(module, [loader(n=8, seed=1), loader(n=8, seed=2)], verbose=False)

    class TwoLoaders(Regressor):
        def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
            self.log("val_loss", self.loss(batch))

    two = trainer.validate(TwoLoaders(), [loader(n=8, seed=1), loader(n=8, seed=2)], verbose=False)
    assert [set(r) for r in two] == [{"val_loss/dataloader_idx_0"}, {"val_loss/dataloader_idx_1"}]
