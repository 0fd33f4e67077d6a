"""Lightning idioms as Lightning users write them, with only the import changed (``import ember as L``)."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset
from trainer_helpers import Regressor, loader, quiet_trainer, regression_data

import ember as L
from ember.callbacks import Callback, ModelCheckpoint, ProgressBar
from ember.loggers import CSVLogger


# ---------------------------------------------------------------------------------------------- seed_everything
class NumpyNoise(Dataset[torch.Tensor]):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor([float(np.random.rand()), float(torch.utils.data.get_worker_info().id)])


class Collects(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[torch.Tensor] = []

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        self.seen.append(batch)
        return (self.w * batch[:, 0]).sum()

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_seed_everything_as_lightning_users_call_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")  # restored after the test
    monkeypatch.setenv("PL_SEED_WORKERS", "0")
    assert L.seed_everything(42, workers=True) == 42
    assert os.environ["PL_GLOBAL_SEED"] == "42" and os.environ["PL_SEED_WORKERS"] == "1"
    first = (torch.rand(3), np.random.rand(), __import__("random").random())
    assert L.seed_everything() == 42  # no argument: the recorded seed
    again = (torch.rand(3), np.random.rand(), __import__("random").random())
    assert torch.equal(first[0], again[0]) and first[1:] == again[1:]
    with pytest.raises(L.EmberConfigError, match="seed"):
        L.seed_everything(-1)
    # workers=True: each DataLoader worker draws its own NumPy numbers (forked workers would all repeat one stream)
    module = Collects()
    quiet_trainer(tmp_path, max_epochs=1).fit(module, DataLoader(NumpyNoise(), batch_size=2, num_workers=2))
    rows = torch.cat(module.seen)
    by_worker = {int(w): rows[rows[:, 1] == w, 0] for w in (0, 1)}
    assert len(by_worker[0]) == len(by_worker[1]) == 4
    assert not torch.equal(by_worker[0], by_worker[1])


# ---------------------------------------------------------------------------------------------- LightningDataModule
class RegressionData(L.LightningDataModule):
    def __init__(self, batch_size: int = 4) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.calls: list[str] = []

    def prepare_data(self) -> None:
        self.calls.append("prepare_data")

    def setup(self, stage: str) -> None:
        self.calls.append(f"setup:{stage}")
        self.train, self.val = regression_data(16), regression_data(8, seed=1)

    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(self.train, batch_size=self.hparams.batch_size)

    def val_dataloader(self) -> DataLoader[Any]:
        return DataLoader(self.val, batch_size=self.hparams.batch_size)

    def teardown(self, stage: str) -> None:
        self.calls.append(f"teardown:{stage}")


def test_lightning_datamodule(tmp_path: Path) -> None:
    assert L.LightningDataModule is L.DataModule
    dm = RegressionData(batch_size=8)
    logger = CSVLogger(tmp_path, name="csv")
    trainer = quiet_trainer(tmp_path, max_epochs=1, logger=logger)
    trainer.fit(Regressor(), datamodule=dm)
    assert dm.calls == ["prepare_data", "setup:fit", "teardown:fit"] and dm.trainer is trainer
    assert trainer.global_step == 2 and "val_loss" in trainer.callback_metrics  # 16 items / 8, validation ran
    assert "batch_size: 8" in (Path(logger.log_dir) / "hparams.yaml").read_text()
    ready = L.LightningDataModule.from_datasets(regression_data(12), regression_data(4), batch_size=4)
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(Regressor(), ready)
    assert trainer.global_step == 3


# ---------------------------------------------------------------------------------------------- trainer.is_last_batch
def test_trainer_is_last_batch(tmp_path: Path) -> None:
    flags: list[bool] = []

    class Watch(Callback):
        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            flags.append(trainer.is_last_batch)

    quiet_trainer(tmp_path, max_epochs=2, callbacks=[Watch()]).fit(Regressor(), loader(n=20))
    assert flags == [False] * 4 + [True] + [False] * 4 + [True]
    flags.clear()
    quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=3, callbacks=[Watch()]).fit(Regressor(), loader(n=20))
    assert flags == [False, False, True]


# ---------------------------------------------------------------------------------------------- load_from_checkpoint
class WithBackbone(L.LightningModule):
    def __init__(self, backbone: torch.nn.Module, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.backbone = backbone

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self.backbone(x), y)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def test_load_from_checkpoint(tmp_path: Path) -> None:
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_loss")
    trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=[checkpoint], enable_checkpointing=True)
    model = Regressor(lr=0.03)
    trainer.fit(model, loader(), loader(n=8, seed=1))
    restored = Regressor.load_from_checkpoint(checkpoint.best_model_path)
    assert restored.hparams == {"lr": 0.03, "features": 4}  # from the checkpoint
    best = trainer.validate(restored, loader(n=8, seed=1), verbose=False)[0]["val_loss"]
    assert best == pytest.approx(float(checkpoint.best_model_score))
    assert Regressor.load_from_checkpoint(checkpoint.best_model_path, lr=0.5).hparams.lr == 0.5  # an override
    # a hyperparameter that was an object is stored as text only: it must be passed again, and the error says so
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    trained = WithBackbone(torch.nn.Linear(4, 1))
    trainer.fit(trained, loader())
    path = trainer.save_checkpoint(tmp_path / "with_backbone")
    with pytest.raises(L.EmberConfigError, match=r"\['backbone'\] were objects.*backbone=\.\.\."):
        WithBackbone.load_from_checkpoint(path)
    again = WithBackbone.load_from_checkpoint(path, backbone=torch.nn.Linear(4, 1))
    assert torch.equal(again.backbone.weight, trained.backbone.weight) and again.hparams.lr == 0.1
    (tmp_path / "lightning.ckpt").write_bytes(b"PK")  # a torch.save file from elsewhere
    with pytest.raises(L.EmberConfigError, match=r"is a Lightning/torch\.save file, not an ember checkpoint"):
        Regressor.load_from_checkpoint(tmp_path / "lightning.ckpt")


# ---------------------------------------------------------------------------------------------- torchmetrics
def test_logging_a_torchmetrics_metric(tmp_path: Path) -> None:
    torchmetrics = pytest.importorskip("torchmetrics")

    class Classifier(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(4, 1)
            self.train_acc = torchmetrics.classification.BinaryAccuracy()
            self.val_acc = torchmetrics.classification.BinaryAccuracy()
            self.epoch_values: list[float] = []

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            logits = self.net(x).squeeze(-1)
            self.train_acc(logits.sigmoid(), y)
            self.log("train_acc", self.train_acc, on_step=True, on_epoch=True)
            return torch.nn.functional.binary_cross_entropy_with_logits(logits, y.float())

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.val_acc.update(self.net(x).squeeze(-1).sigmoid(), y)
            self.log("val_acc", self.val_acc)

        def on_train_epoch_end(self) -> None:
            self.epoch_values.append(float(self.trainer.callback_metrics["train_acc_epoch"]))

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.0)  # frozen weights: accuracies are easy to check

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(24, 4, generator=g), torch.randint(0, 2, (24,), generator=g)
    model = Classifier()
    trainer = quiet_trainer(tmp_path, max_epochs=2, log_every_n_steps=1)
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=8), DataLoader(TensorDataset(x, y), batch_size=12))
    expected = float(((model.net(x).squeeze(-1) > 0).long() == y).float().mean())
    assert model.epoch_values == pytest.approx([expected, expected])  # reset between epochs: not a running mean
    assert float(trainer.callback_metrics["val_acc"]) == pytest.approx(expected)
    last_batch = float(((model.net(x[16:]).squeeze(-1) > 0).long() == y[16:]).float().mean())
    assert float(trainer.callback_metrics["train_acc_step"]) == pytest.approx(last_batch)
    assert int(model.train_acc.tp + model.train_acc.fp + model.train_acc.tn + model.train_acc.fn) == 0  # reset


# ---------------------------------------------------------------------------------------------- save_checkpoint
def test_save_checkpoint_x_ckpt_and_torch_load(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    model = Regressor()
    trainer.fit(model, loader())
    trainer.save_checkpoint("x.ckpt")  # in the working directory (tmp_path), as Lightning users write it
    assert sorted(os.listdir(".")) == ["x.ckpt"]  # no stray `latest` next to it
    assert "x.ckpt is a checkpoint directory, not a torch.save file" in capsys.readouterr().out
    with pytest.raises(IsADirectoryError, match=r"x\.ckpt"):
        torch.load("x.ckpt")
    readme = Path("x.ckpt", "README.md").read_text()
    assert "load_from_checkpoint" in readme and "torch.load" in readme
    restored = Regressor.load_from_checkpoint("x.ckpt")
    assert torch.equal(restored.net.weight, model.net.weight)


# ---------------------------------------------------------------------------------------------- Module.wrap
def test_wrap_takes_a_built_scheduler(tmp_path: Path) -> None:
    net = torch.nn.Sequential(torch.nn.Linear(4, 1))

    class WithLoss(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.mse_loss(self.net(x), y)

    model = WithLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(L.Module.wrap(model, optimizer=optimizer, lr_scheduler=scheduler), loader(n=12))
    assert trainer.global_step == 3 and optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)
    other = torch.optim.lr_scheduler.StepLR(torch.optim.SGD(model.parameters(), lr=1.0), step_size=1)
    with pytest.raises(L.EmberConfigError, match="must belong to the optimizer"):
        L.Module.wrap(model, optimizer=optimizer, lr_scheduler=other)


# ---------------------------------------------------------------------------------------------- warnings and banners
def test_log_every_n_steps_default_with_a_short_epoch_warns(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match=r"5 batches, fewer than Trainer\(log_every_n_steps=50\)"):
        quiet_trainer(tmp_path, max_epochs=1, logger=CSVLogger(tmp_path)).fit(Regressor(), loader(n=20))
    with warnings_as_list() as caught:
        quiet_trainer(tmp_path, max_epochs=1, logger=CSVLogger(tmp_path), log_every_n_steps=5).fit(
            Regressor(), loader(n=20))
    assert not [w for w in caught if "log_every_n_steps" in str(w.message)]


def warnings_as_list() -> Any:
    import warnings

    return warnings.catch_warnings(record=True)


def test_fast_dev_run_banner(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trainer = quiet_trainer(tmp_path, fast_dev_run=True, enable_checkpointing=True, logger=True)
    out = capsys.readouterr().out
    assert "fast_dev_run=1" in out and "logging" in out and "checkpointing" in out and "off" in out
    trainer.fit(Regressor(), loader())
    assert trainer.global_step == 1 and not (tmp_path / "checkpoints").exists() and trainer.loggers == []


def test_validate_progress_line_shows_only_validation_metrics(tmp_path: Path) -> None:
    class Shows(Regressor):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = self.loss(batch)
            self.log("train_loss", loss, prog_bar=True)
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("val_loss", self.loss(batch), prog_bar=True)

    stream = io.StringIO()
    trainer = quiet_trainer(tmp_path, max_epochs=1, enable_progress_bar=True, callbacks=[ProgressBar(stream=stream)])
    model = Shows()
    trainer.fit(model, loader())
    trainer.validate(model, loader(n=8, seed=1))
    (line,) = [line for line in stream.getvalue().splitlines() if line.startswith("Validate:")]
    assert "val_loss=" in line and "train_loss" not in line


def test_ckpt_path_last_warning_names_the_folders_it_searched(tmp_path: Path) -> None:
    trainer = quiet_trainer(tmp_path, max_epochs=1, enable_checkpointing=True, logger=CSVLogger(tmp_path, "csv"))
    with pytest.warns(UserWarning, match="no checkpoint to resume from") as caught:
        trainer.fit(Regressor(), loader(), ckpt_path="last")
    (message,) = [str(w.message) for w in caught if "ckpt_path='last'" in str(w.message)]
    assert str(tmp_path / "csv" / "version_0" / "checkpoints") in message  # where ModelCheckpoint writes
    assert "version_*" in message


def test_flag_messages(tmp_path: Path) -> None:
    with pytest.raises(L.EmberConfigError, match=r"FP8 training is not supported.*'bf16-mixed'") as err:
        L.Trainer(precision="fp8")
    assert "fp32" not in str(err.value).split("Valid values")[0]  # no "did you mean 'fp32'"
    with pytest.raises(L.EmberConfigError, match="-1 for no limit"):
        L.Trainer(max_epochs=-5)
    with pytest.raises(L.EmberConfigError, match="timeout"):
        L.Trainer(timeout=-1)


def test_simple_profiler_rows_fit_a_terminal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trainer = quiet_trainer(tmp_path, max_epochs=1, profiler="simple", enable_checkpointing=True,
                            callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="train_loss")])
    trainer.fit(Regressor(), loader())
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert table and max(len(line) for line in table) <= 130
    assert any("[Callback]ModelCheckpoint.on_train_epoch_end" in line for line in table)
    totals = [float(re.split(r"\s*\|\s*", line)[4]) for line in table[2:]]
    assert totals == sorted(totals, reverse=True)  # slowest first
