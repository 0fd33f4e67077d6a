"""The exact order of hook calls in a tiny fit with validation (the order documented in ember.trainer.trainer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from trainer_helpers import Regressor, loader, quiet_trainer

from ember.callbacks import Callback

MODULE_HOOKS = [
    "setup", "teardown", "configure_optimizers", "on_fit_start", "on_fit_end", "on_train_start", "on_train_end",
    "on_train_epoch_start", "on_train_epoch_end", "on_validation_start", "on_validation_end",
    "on_validation_epoch_start", "on_validation_epoch_end", "on_before_backward", "on_after_backward",
    "on_before_optimizer_step", "on_before_zero_grad", "training_step", "validation_step", "backward",
    "configure_gradient_clipping", "optimizer_step", "optimizer_zero_grad",
]
BATCH_HOOKS = ["on_train_batch_start", "on_train_batch_end", "on_validation_batch_start", "on_validation_batch_end"]
CALLBACK_HOOKS = [
    "setup", "teardown", "on_fit_start", "on_fit_end", "on_sanity_check_start", "on_sanity_check_end",
    "on_train_start", "on_train_end", "on_train_epoch_start", "on_train_epoch_end", "on_validation_start",
    "on_validation_end", "on_validation_epoch_start", "on_validation_epoch_end", "on_before_backward",
    "on_after_backward", "on_before_optimizer_step", "on_before_zero_grad", *BATCH_HOOKS,
]


def recording_module(calls: list[str]) -> Regressor:
    class Recorded(Regressor):
        pass

    for name in MODULE_HOOKS + BATCH_HOOKS:
        def hook(self: Any, *args: Any, _name: str = name, **kwargs: Any) -> Any:
            calls.append(f"module.{_name}")
            return getattr(Regressor, _name)(self, *args, **kwargs)

        setattr(Recorded, name, hook)
    return Recorded()


def recording_callback(calls: list[str]) -> Callback:
    class Recorder(Callback):
        pass

    for name in CALLBACK_HOOKS:
        def hook(self: Any, trainer: Any, module: Any, *args: Any, _name: str = name) -> None:
            calls.append(f"callback.{_name}")

        setattr(Recorder, name, hook)
    return Recorder()


def both(name: str) -> list[str]:
    return [f"callback.{name}", f"module.{name}"]


def validation() -> list[str]:
    return [
        *both("on_validation_start"), *both("on_validation_epoch_start"),
        *both("on_validation_batch_start"), "module.validation_step", *both("on_validation_batch_end"),
        *both("on_validation_epoch_end"), *both("on_validation_end"),
    ]


def train_batch() -> list[str]:
    return [
        *both("on_train_batch_start"), "module.training_step",
        *both("on_before_backward"), "module.backward", *both("on_after_backward"),
        *both("on_before_optimizer_step"), "module.configure_gradient_clipping", "module.optimizer_step",
        *both("on_before_zero_grad"), "module.optimizer_zero_grad",
        *both("on_train_batch_end"),
    ]


def test_fit_hook_order(tmp_path: Path) -> None:
    calls: list[str] = []
    module = recording_module(calls)
    trainer = quiet_trainer(tmp_path, max_epochs=1, num_sanity_val_steps=1, callbacks=[recording_callback(calls)])
    trainer.fit(module, loader(n=8, batch_size=4), loader(n=4, batch_size=4, seed=1))
    expected = [
        *both("setup"), "module.configure_optimizers", *both("on_fit_start"),
        "callback.on_sanity_check_start", *validation(), "callback.on_sanity_check_end",
        *both("on_train_start"), *both("on_train_epoch_start"),
        *train_batch(), *train_batch(), *validation(),
        *both("on_train_epoch_end"), *both("on_train_end"), *both("on_fit_end"), *both("teardown"),
    ]
    assert calls == expected
    assert trainer.global_step == 2 and trainer.current_epoch == 1


def test_accumulation_steps_only_at_window_end(tmp_path: Path) -> None:
    calls: list[str] = []
    module = recording_module(calls)
    trainer = quiet_trainer(tmp_path, max_epochs=1, accumulate_grad_batches=2, limit_train_batches=3)
    trainer.fit(module, loader(n=16, batch_size=4))
    steps = [c for c in calls if c in ("module.training_step", "module.optimizer_step")]
    # 3 micro-batches, windows of 2: step after the 2nd, and after the 3rd (the limit closes the partial window)
    assert steps == ["module.training_step", "module.training_step", "module.optimizer_step",
                     "module.training_step", "module.optimizer_step"]
    assert trainer.global_step == 2


def test_monitoring_callbacks_run_after_the_module_epoch_end(tmp_path: Path) -> None:
    calls: list[str] = []

    class Monitor(Callback):
        _monitors_metrics = True

        def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
            calls.append(f"monitor sees {sorted(trainer.callback_metrics)}")

    class Plain(Callback):
        def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
            calls.append("plain")

    class Logs(Regressor):
        def on_train_epoch_end(self) -> None:
            calls.append("module")
            self.log("epoch_metric", torch.tensor(1.0))

    quiet_trainer(tmp_path, max_epochs=1, callbacks=[Monitor(), Plain()]).fit(Logs(), loader())
    assert calls == ["plain", "module", "monitor sees ['epoch_metric', 'train_loss']"]
