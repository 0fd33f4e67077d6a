"""Bad input fails before training starts, naming the argument, the valid values and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from trainer_helpers import Regressor, loader, quiet_trainer

import ember as L
from ember import EmberConfigError
from ember.callbacks import EarlyStopping, ModelCheckpoint


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_epoch": 3}, "unknown argument 'max_epoch'. Did you mean \"max_epochs\""),
        ({"gradient_clip": 1.0}, "Did you mean \"gradient_clip_val\""),
        ({"plugins": []}, "Lightning flag ember does not have"),
        ({"precision": "bf16-mix"}, "precision='bf16-mix' is not a valid value. Did you mean \"bf16-mixed\""),
        ({"strategy": "dpp"}, "strategy='dpp' is not a valid value. Did you mean \"ddp\""),
        ({"accelerator": "gpus"}, "accelerator='gpus' is not a valid value. Did you mean \"gpu\""),
        ({"gradient_clip_algorithm": "nrm"}, "Did you mean \"norm\""),
        ({"devices": 0}, "devices=0 must be >= 1"),
        ({"max_time": "an hour"}, "max_time='an hour'"),
        ({"limit_train_batches": 1.5}, "limit_train_batches=1.5 as a float is a fraction"),
        ({"val_check_interval": 0.0}, "val_check_interval=0.0"),
        ({"min_epochs": 5, "max_epochs": 2}, "min_epochs=5 is larger than max_epochs=2"),
        ({"num_nodes": 2}, "num_nodes=2: start the job on every machine with `ember launch"),
        ({"logger": "tensorboard"}, "logger must be True/False, an ember.loggers.Logger"),
        ({"profiler": "simpel"}, "profiler='simpel'"),
        ({"enable_checkpointing": False, "callbacks": [ModelCheckpoint()]}, "enable_checkpointing=False but"),
    ],
)
def test_bad_trainer_arguments(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(EmberConfigError, match=_literal(message)):
        L.Trainer(default_root_dir=str(tmp_path), **kwargs)


def _literal(text: str) -> str:
    import re

    return re.escape(text)


def test_missing_training_step_or_optimizers_fail_before_any_work(tmp_path: Path) -> None:
    class NoStep(L.Module):
        def configure_optimizers(self) -> Any:
            return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)

    trainer = quiet_trainer(tmp_path)
    with pytest.raises(EmberConfigError, match="NoStep has no training_step"):
        trainer.fit(NoStep(), loader())
    assert trainer.accelerator.prepared.models == []  # nothing was prepared

    class NoOptim(L.Module):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return torch.zeros((), requires_grad=True)

    with pytest.raises(EmberConfigError, match="NoOptim has no configure_optimizers"):
        quiet_trainer(tmp_path).fit(NoOptim(), loader())
    with pytest.raises(EmberConfigError, match=r"fit\(\) needs training data"):
        quiet_trainer(tmp_path).fit(Regressor())
    with pytest.raises(EmberConfigError, match=r"test\(\) needs NoOptim\.test_step"):
        quiet_trainer(tmp_path).test(NoOptim(), loader())


def test_monitoring_a_metric_that_is_never_logged(tmp_path: Path) -> None:
    checkpoint = ModelCheckpoint(monitor="val_los", dirpath=tmp_path / "ckpt")
    trainer = quiet_trainer(tmp_path, max_epochs=3, callbacks=[checkpoint], enable_checkpointing=True)
    with pytest.raises(EmberConfigError, match=r"ModelCheckpoint\(monitor='val_los'\) found no metric 'val_los'; "
                                               r"logged metrics: \['train_loss', 'val_loss'\]. Did you mean \"val_loss\""):
        trainer.fit(Regressor(), loader(), loader(n=8, seed=1))
    assert trainer.current_epoch == 0 and trainer.state.status == "failed"  # at the end of the first epoch

    early = EarlyStopping(monitor="val_loss")  # no validation data: val_loss never appears
    with pytest.raises(EmberConfigError, match=r"EarlyStopping\(monitor='val_loss'\): no metric 'val_loss' was "
                                               r"logged; available: \['train_loss'\]"):
        quiet_trainer(tmp_path, max_epochs=3, callbacks=[early]).fit(Regressor(), loader())

    relaxed = EarlyStopping(monitor="val_loss", strict=False)
    quiet_trainer(tmp_path, max_epochs=2, callbacks=[relaxed]).fit(Regressor(), loader())


def test_devices_2_refuses_to_rerun_a_test_runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.argv", ["/usr/bin/pytest", "-q"])
    trainer = quiet_trainer(tmp_path, devices=2)
    assert trainer.world_size == 2 and trainer.global_rank == 0
    with pytest.raises(EmberConfigError, match="starts 2 processes by re-running your script"):
        trainer.fit(Regressor(), loader())


def test_joining_a_job_of_another_size_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from ember.trainer._launch import must_launch

    env = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"}
    assert must_launch(2, 1, "cpu", env) is False
    assert must_launch(None, 1, "cpu", env) is False
    with pytest.raises(EmberConfigError, match="Trainer\\(devices=4\\) but this job was launched with 2"):
        must_launch(4, 1, "cpu", env)
    assert must_launch(2, 1, "cpu", {}) is True and must_launch(1, 1, "cpu", {}) is False


def test_exceptions_reach_callbacks_and_leave_status_failed(tmp_path: Path) -> None:
    seen: list[str] = []

    class Watch(L.Callback):
        def on_exception(self, trainer: Any, module: Any, exception: BaseException) -> None:
            seen.append(type(exception).__name__)

    class Boom(Regressor):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            raise RuntimeError("boom")

    trainer = quiet_trainer(tmp_path, callbacks=[Watch()])
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(Boom(), loader())
    assert seen == ["RuntimeError"] and trainer.state.status == "failed"


def test_log_options_ember_does_not_take_fail_instead_of_being_ignored(tmp_path: Path) -> None:
    import torch

    import ember as L

    for options, match in (({"enable_graph": True}, "enable_graph=True"),
                           ({"sync_dist_group": object()}, "sync_dist_group"),
                           ({"rank_zero_only": True, "sync_dist": True}, "cannot be synchronised")):
        class Net(L.Module):
            def __init__(self, log_options: dict[str, Any]) -> None:
                super().__init__()
                self.w = torch.nn.Parameter(torch.zeros(2))
                self.log_options = log_options

            def training_step(self, x: torch.Tensor, batch_idx: int) -> torch.Tensor:
                loss = (x @ self.w - 1).pow(2).mean()
                self.log("loss", loss, **self.log_options)
                return loss

            def configure_optimizers(self) -> torch.optim.Optimizer:
                return torch.optim.SGD(self.parameters(), lr=0.1)

        trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
        with pytest.raises(L.EmberConfigError, match=match):
            trainer.fit(Net(options), torch.utils.data.DataLoader(torch.ones(4, 2), batch_size=2))
    with pytest.raises(L.EmberConfigError, match="weights_only=True"):
        trainer.save_checkpoint(tmp_path / "w", weights_only=True)
