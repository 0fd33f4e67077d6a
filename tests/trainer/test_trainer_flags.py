"""Loop-control flags (limits, val_check_interval, max_steps, max_time, fast_dev_run, overfit_batches), the default
logger, progress bars that refresh on time, profilers, datamodules and the Trainer's public surface."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from trainer_helpers import Regressor, loader, quiet_trainer

import ember as L
from ember.callbacks import Callback, ProgressBar, RichProgressBar, TQDMProgressBar


class Counting(Regressor):
    def __init__(self) -> None:
        super().__init__()
        self.train_batches = 0
        self.val_batches = 0

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.train_batches += 1
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.val_batches += 1
        super().validation_step(batch, batch_idx)


def test_limits_val_check_interval_and_sanity_steps(tmp_path: Path) -> None:
    module = Counting()
    trainer = quiet_trainer(tmp_path, max_epochs=2, limit_train_batches=4, limit_val_batches=0.5,
                            val_check_interval=0.5, num_sanity_val_steps=1)
    trainer.fit(module, loader(n=40), loader(n=16, seed=1))  # 10 train batches → 4; 4 val batches → 2
    assert trainer.num_training_batches == 4 and trainer.num_val_batches == [2]
    assert module.train_batches == 8 and trainer.global_step == 8
    assert module.val_batches == 1 + 2 * 2 * 2  # sanity + (2 validations per epoch x 2 batches) x 2 epochs
    assert trainer.estimated_stepping_batches == 8


def test_max_steps_wins_over_epochs_and_resets_nothing_else(tmp_path: Path) -> None:
    trainer = quiet_trainer(tmp_path, max_steps=7, accumulate_grad_batches=2)
    assert trainer.max_epochs == -1
    trainer.fit(Regressor(), loader(n=40))  # 10 micro-batches → 5 steps per epoch
    assert trainer.global_step == 7 and trainer.estimated_stepping_batches == 7
    assert trainer.current_epoch == 2  # as Lightning: the interrupted epoch counts as ended
    assert L.Trainer(logger=False, accelerator="cpu").max_epochs == 1000  # Lightning's default


def test_max_time_stops_training(tmp_path: Path) -> None:
    class Slow(Regressor):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            import time

            time.sleep(0.05)
            return super().training_step(batch, batch_idx)

    trainer = quiet_trainer(tmp_path, max_epochs=1000, max_time={"seconds": 0.3})
    trainer.fit(Slow(), loader(n=400))
    assert 2 <= trainer.global_step < 40 and trainer.should_stop


def test_fast_dev_run_and_overfit_batches(tmp_path: Path) -> None:
    module = Counting()
    trainer = L.Trainer(accelerator="cpu", default_root_dir=str(tmp_path), fast_dev_run=2, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(module, loader(n=40), loader(n=40, seed=1))
    assert module.train_batches == 2 and module.val_batches == 2 and trainer.loggers == []
    assert not (tmp_path / "checkpoints").exists() and not list(tmp_path.rglob("manifest.json"))

    seen: list[torch.Tensor] = []

    class Record(Callback):
        def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
            seen.append(batch[0])

    quiet_trainer(tmp_path, max_epochs=2, overfit_batches=2, callbacks=[Record()]).fit(
        Regressor(), loader(n=40, shuffle=True))
    assert len(seen) == 4 and torch.equal(seen[0], seen[2]) and torch.equal(seen[1], seen[3])  # same, unshuffled


def test_default_logger_writes_tensorboard_and_hparams(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = L.Trainer(accelerator="cpu", default_root_dir=str(tmp_path), max_epochs=2, log_every_n_steps=1,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Regressor(lr=0.02), loader(), loader(n=8, seed=1))
    assert type(trainer.logger).__name__ == "TensorBoardLogger"
    assert trainer.log_dir == str(tmp_path / "ember_logs" / "version_0")
    assert "lr: 0.02" in (Path(trainer.log_dir) / "hparams.yaml").read_text()
    events = EventAccumulator(trainer.log_dir)
    events.Reload()
    assert {"train_loss", "val_loss", "epoch"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("train_loss")] == list(range(10))
    ckpt = trainer.checkpoint_callback  # the default ModelCheckpoint writes under the run directory
    assert Path(ckpt.dirpath) == Path(trainer.log_dir) / "checkpoints" and Path(ckpt.best_model_path).name == "epoch=1-step=10"


def test_plain_progress_bar_prints_one_line_per_epoch_off_a_terminal(tmp_path: Path) -> None:
    stream = io.StringIO()
    trainer = quiet_trainer(tmp_path, max_epochs=3, callbacks=[ProgressBar(stream=stream)], enable_progress_bar=True)

    class Tokens(Regressor):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = super().training_step(batch, batch_idx)
            self.log("shown", loss, prog_bar=True)
            return loss

    trainer.fit(Tokens(), loader(n=8))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3 and all(line.startswith(f"Epoch {i}: 2/2 [") for i, line in enumerate(lines))
    assert "it/s" in lines[0] and "loss=" in lines[0] and "shown=" in lines[0]


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("cls", [ProgressBar, TQDMProgressBar, RichProgressBar])
def test_progress_bars_refresh_on_time_not_per_step(tmp_path: Path, cls: type[ProgressBar]) -> None:
    reads: list[int] = []

    class Counted(cls):  # type: ignore[valid-type,misc]
        def get_metrics(self, trainer: Any, pl_module: Any) -> dict[str, float]:
            reads.append(trainer.global_step)
            return super().get_metrics(trainer, pl_module)

    slow = Counted(refresh_rate=1e-3, stream=FakeTTY())  # at most one refresh per 1000 s: only epoch ends draw
    quiet_trainer(tmp_path, max_epochs=2, callbacks=[slow], enable_progress_bar=True).fit(Regressor(), loader(n=40))
    assert reads == [10, 20]
    reads.clear()
    fast = Counted(refresh_rate=1e9, stream=FakeTTY())
    quiet_trainer(tmp_path, max_epochs=1, callbacks=[fast], enable_progress_bar=True).fit(Regressor(), loader(n=40))
    assert len(reads) == 11  # every batch (the clock always allows it) plus the epoch end


def test_simple_profiler_reports_hooks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trainer = quiet_trainer(tmp_path, max_epochs=1, profiler="simple")
    trainer.fit(Regressor(), loader())
    out = capsys.readouterr().out
    assert "[LightningModule]Regressor.training_step" in out and "[LightningModule]Regressor.optimizer_step" in out


class DataModule:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.hparams = {"batch_size": 4}

    def prepare_data(self) -> None:
        self.calls.append("prepare_data")

    def setup(self, stage: str) -> None:
        self.calls.append(f"setup:{stage}")

    def train_dataloader(self) -> Any:
        return loader(n=8)

    def val_dataloader(self) -> Any:
        return loader(n=8, seed=1)

    def test_dataloader(self) -> Any:
        return loader(n=8, seed=2)

    def teardown(self, stage: str) -> None:
        self.calls.append(f"teardown:{stage}")


def test_datamodule_and_trainer_surface(tmp_path: Path) -> None:
    dm = DataModule()
    module = Regressor()
    trainer = quiet_trainer(tmp_path, max_epochs=2)
    trainer.fit(module, datamodule=dm)
    (result,) = trainer.test(datamodule=dm, verbose=False)
    assert dm.calls == ["prepare_data", "setup:fit", "teardown:fit", "prepare_data", "setup:test", "teardown:test"]
    assert set(result) == {"test_loss"} and trainer.datamodule is dm
    assert trainer.lightning_module is module and module.trainer is trainer
    assert (trainer.global_rank, trainer.local_rank, trainer.world_size, trainer.is_global_zero) == (0, 0, 1, True)
    assert trainer.num_training_batches == 2 and trainer.state.fn == "test" and trainer.state.status == "finished"
    assert trainer.optimizers[0].param_groups[0]["lr"] == 0.05 and trainer.lr_scheduler_configs == []
    assert trainer.early_stopping_callback is None and trainer.checkpoint_callback is None
    assert module.current_epoch == 2 and module.global_step == 4 and module.device == torch.device("cpu")
    trainer.fit(module, dm)  # a datamodule in the dataloader position, and a second fit continues
    assert trainer.current_epoch == 2 and trainer.global_step == 4  # max_epochs already reached
    assert math.isinf(L.Trainer(accelerator="cpu", logger=False, max_steps=-1, max_epochs=-1).estimated_stepping_batches)
