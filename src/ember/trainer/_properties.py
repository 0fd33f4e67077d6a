"""The Trainer's read-only surface (the properties callbacks and modules read), kept apart from the loops."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import torch

from ember.trainer import _config as cfg

if TYPE_CHECKING:
    from ember.accelerator import Accelerator
    from ember.callbacks.base import Callback
    from ember.loggers import Logger
    from ember.trainer._optim_config import LRSchedulerConfig
    from ember.trainer._state import LoopState, TrainerState
    from ember.trainer.logging import MetricsHub
    from ember.trainer.module import Module


class TrainerProperties:
    """Process facts, counters, callbacks and metrics of a :class:`ember.Trainer` (mixed into it)."""

    _accelerator: Accelerator | None
    _precision_flag: Any
    _module: Module | None
    _datamodule: Any
    _loop: LoopState
    _world_planned: int
    _accumulate: int
    _metrics: MetricsHub
    _log_dir: str | None
    _optimizers: list[Any]
    _scheduler_configs: list[LRSchedulerConfig]
    _num_training_batches: float
    _num_eval_batches: list[float]
    _start_time: float | None
    num_nodes: int
    default_root_dir: str
    num_sanity_val_steps: int
    max_epochs: int
    max_steps: int
    callbacks: list[Callback]
    loggers: list[Logger]
    state: TrainerState

    @property
    def accelerator(self) -> Accelerator:
        if self._accelerator is None:
            raise RuntimeError("this process only launches the workers; it has no Accelerator.")
        return self._accelerator

    @property
    def strategy(self) -> Any:
        return self.accelerator.strategy

    @property
    def precision(self) -> str:
        return self._accelerator.precision.name if self._accelerator is not None else str(self._precision_flag)

    @property
    def lightning_module(self) -> Module | None:
        return self._module

    model = lightning_module

    @property
    def datamodule(self) -> Any:
        return self._datamodule

    @property
    def global_step(self) -> int:
        return self._accelerator.step if self._accelerator is not None else 0

    @property
    def is_last_batch(self) -> bool:
        """True while the last training batch of the epoch runs (the limit, or the loader's end), as Lightning."""
        return self._loop.is_last_batch

    @property
    def current_epoch(self) -> int:
        return self._loop.epoch

    @property
    def global_rank(self) -> int:
        return self._accelerator.process.rank if self._accelerator is not None else 0

    @property
    def local_rank(self) -> int:
        return self._accelerator.process.local_rank if self._accelerator is not None else 0

    @property
    def node_rank(self) -> int:
        return self._accelerator.process.node_rank if self._accelerator is not None else 0

    @property
    def world_size(self) -> int:
        return self._accelerator.process.world_size if self._accelerator is not None else self._world_planned

    @property
    def num_devices(self) -> int:
        return self.world_size // self.num_nodes

    @property
    def is_global_zero(self) -> bool:
        return self.global_rank == 0

    @property
    def accumulate_grad_batches(self) -> int:
        return self._accumulate

    @accumulate_grad_batches.setter
    def accumulate_grad_batches(self, value: int) -> None:
        self._accumulate = int(cfg.check_int("accumulate_grad_batches", value, 1) or 1)
        if self._accelerator is not None:
            self._accelerator.gradient_state.accumulation_steps = self._accumulate

    @property
    def checkpoint_callbacks(self) -> list[Any]:
        from ember.callbacks import ModelCheckpoint

        return [cb for cb in self.callbacks if isinstance(cb, ModelCheckpoint)]

    @property
    def checkpoint_callback(self) -> Any:
        found = self.checkpoint_callbacks
        return found[0] if found else None

    @property
    def early_stopping_callbacks(self) -> list[Any]:
        from ember.callbacks import EarlyStopping

        return [cb for cb in self.callbacks if isinstance(cb, EarlyStopping)]

    @property
    def early_stopping_callback(self) -> Any:
        found = self.early_stopping_callbacks
        return found[0] if found else None

    @property
    def progress_bar_callback(self) -> Any:
        from ember.callbacks import ProgressBar

        return next((cb for cb in self.callbacks if isinstance(cb, ProgressBar)), None)

    @property
    def callback_metrics(self) -> dict[str, torch.Tensor]:
        return self._metrics.callback_metrics

    @property
    def logged_metrics(self) -> dict[str, torch.Tensor]:
        return self._metrics.logged_metrics

    @property
    def progress_bar_metrics(self) -> dict[str, torch.Tensor]:
        return self._metrics.progress_bar_metrics

    @property
    def logger(self) -> Logger | None:
        return self.loggers[0] if self.loggers else None

    @property
    def log_dir(self) -> str:
        """The first logger's run directory (its ``save_dir`` if it has none), else ``default_root_dir``."""
        if self._log_dir is not None:
            return self._log_dir
        if self.loggers:
            found = self.loggers[0].log_dir or self.loggers[0].save_dir
            if found:
                return found
        return self.default_root_dir

    @property
    def optimizers(self) -> list[Any]:
        return list(self._optimizers)

    @property
    def lr_scheduler_configs(self) -> list[LRSchedulerConfig]:
        return list(self._scheduler_configs)

    @property
    def num_training_batches(self) -> float:
        return self._num_training_batches

    @property
    def num_val_batches(self) -> list[float]:
        return list(self._num_eval_batches) if self.state.fn in ("fit", "validate") else []

    @property
    def num_test_batches(self) -> list[float]:
        return list(self._num_eval_batches) if self.state.fn == "test" else []

    @property
    def num_sanity_val_batches(self) -> list[float]:
        steps = math.inf if self.num_sanity_val_steps == -1 else self.num_sanity_val_steps
        return [min(steps, n) for n in self._num_eval_batches]

    @property
    def estimated_stepping_batches(self) -> float:
        """Optimizer steps the whole fit will take (for schedulers built in ``configure_optimizers``)."""
        batches = self._num_training_batches
        if batches == math.inf or self.max_epochs == -1:
            return float(self.max_steps) if self.max_steps != -1 else math.inf
        total = math.ceil(batches / self._accumulate) * max(self.max_epochs, 1)
        return float(min(total, self.max_steps) if self.max_steps != -1 else total)

    @property
    def training(self) -> bool:
        return self.state.stage == "train"

    @property
    def validating(self) -> bool:
        return self.state.stage == "validate"

    @property
    def testing(self) -> bool:
        return self.state.stage == "test"

    @property
    def predicting(self) -> bool:
        return self.state.stage == "predict"

    @property
    def sanity_checking(self) -> bool:
        return self.state.stage == "sanity_check"

    @property
    def interrupted(self) -> bool:
        return self.state.status == "interrupted"

    @property
    def elapsed_time(self) -> float:
        """Seconds since this ``fit`` started training."""
        return 0.0 if self._start_time is None else time.monotonic() - self._start_time

