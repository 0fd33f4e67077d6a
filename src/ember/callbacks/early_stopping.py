"""``EarlyStopping``: stop a fit when a monitored metric stops improving (Lightning's semantics).

>>> from ember.callbacks import EarlyStopping
>>> EarlyStopping(monitor="val_loss", patience=3).mode
'min'
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ember._errors import EmberConfigError, did_you_mean, unknown_value
from ember._log import info as _log_info
from ember._log import warn
from ember.callbacks.base import Callback

if TYPE_CHECKING:
    from ember.trainer.module import Module
    from ember.trainer.trainer import Trainer


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` checks.

    A check happens at the end of each training epoch (after validation) when validation runs once per epoch,
    else after each validation (``check_on_train_epoch_end`` overrides). ``stopping_threshold`` stops once
    the metric is good enough, ``divergence_threshold`` once it is hopeless, ``check_finite`` on NaN/inf.
    A monitored metric that was never logged is an error (``strict=True``) naming the logged ones.
    """

    order_dict = {"min": "<", "max": ">"}
    _monitors_metrics = True

    def __init__(
        self,
        monitor: str,
        min_delta: float = 0.0,
        patience: int = 3,
        verbose: bool = False,
        mode: str = "min",
        strict: bool = True,
        check_finite: bool = True,
        stopping_threshold: float | None = None,
        divergence_threshold: float | None = None,
        check_on_train_epoch_end: bool | None = None,
        log_rank_zero_only: bool = False,
    ) -> None:
        if mode not in ("min", "max"):
            raise unknown_value("EarlyStopping mode", mode, ["min", "max"])
        if not isinstance(patience, int) or patience < 0:
            raise EmberConfigError(f"EarlyStopping(patience={patience!r}) must be an int >= 0.")
        self.monitor = monitor
        self.mode = mode
        self.patience = patience
        self.verbose = verbose
        self.strict = strict
        self.check_finite = check_finite
        self.stopping_threshold = stopping_threshold
        self.divergence_threshold = divergence_threshold
        self._check_on_train_epoch_end = check_on_train_epoch_end
        self.min_delta = abs(min_delta) if mode == "max" else -abs(min_delta)
        self.wait_count = 0
        self.stopped_epoch = 0
        self.best_score = torch.tensor(torch.inf if mode == "min" else -torch.inf)
        self.stopping_reason_message: str | None = None

    @property
    def state_key(self) -> str:
        return f"EarlyStopping{ {'monitor': self.monitor, 'mode': self.mode}!r}"

    def _better(self, a: torch.Tensor, b: torch.Tensor) -> bool:
        return bool(a < b) if self.mode == "min" else bool(a > b)

    def setup(self, trainer: Trainer, pl_module: Module, stage: str) -> None:
        if self._check_on_train_epoch_end is None:
            self._check_on_train_epoch_end = trainer.val_check_interval == 1.0 and trainer.check_val_every_n_epoch == 1

    def on_train_epoch_end(self, trainer: Trainer, pl_module: Module) -> None:
        if self._check_on_train_epoch_end and not self._skip(trainer):
            self._run_check(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: Module) -> None:
        if not self._check_on_train_epoch_end and not self._skip(trainer):
            self._run_check(trainer)

    def _skip(self, trainer: Trainer) -> bool:
        return trainer.state.fn != "fit" or trainer.sanity_checking or bool(trainer.fast_dev_run)

    def _run_check(self, trainer: Trainer) -> None:
        logs = trainer.callback_metrics
        if self.monitor not in logs:
            available = sorted(logs)
            message = (
                f"EarlyStopping(monitor={self.monitor!r}): no metric {self.monitor!r} was logged; available: "
                f"{available}.{did_you_mean(self.monitor, available)} Log it with self.log({self.monitor!r}, value) "
                "or pass one of those names."
            )
            if self.strict:
                raise EmberConfigError(message)
            if trainer.is_global_zero:
                warn(f"{message}")
            return
        current = logs[self.monitor].detach().float().reshape(()).cpu()
        should_stop, reason = self._evaluate(current)
        agreed = trainer._reduce(torch.tensor(float(should_stop), device=trainer.accelerator.device), "max")
        should_stop = bool(agreed > 0)  # any rank asking to stop stops every rank
        trainer.should_stop = trainer.should_stop or should_stop
        if should_stop:
            self.stopped_epoch = trainer.current_epoch
            self.stopping_reason_message = reason
        if reason and self.verbose and trainer.is_global_zero:
            _log_info(f"{reason}")

    def _evaluate(self, current: torch.Tensor) -> tuple[bool, str | None]:
        sign = self.order_dict[self.mode]
        if self.check_finite and not torch.isfinite(current):
            return True, (f"Monitored metric {self.monitor} = {float(current)} is not finite. Previous best value "
                          f"was {float(self.best_score):.3f}. Signaling Trainer to stop.")
        if self.stopping_threshold is not None and self._better(current, torch.tensor(self.stopping_threshold)):
            return True, (f"Stopping threshold reached: {self.monitor} = {float(current)} {sign} "
                          f"{self.stopping_threshold}. Signaling Trainer to stop.")
        if self.divergence_threshold is not None and self._better(-current, torch.tensor(-self.divergence_threshold)):
            return True, (f"Divergence threshold reached: {self.monitor} = {float(current)} {sign} "
                          f"{self.divergence_threshold}. Signaling Trainer to stop.")
        if self._better(current - self.min_delta, self.best_score):
            improvement = "" if torch.isinf(self.best_score) else f" by {abs(float(self.best_score - current)):.3f}"
            self.best_score, self.wait_count = current, 0
            return False, f"Metric {self.monitor} improved{improvement}. New best score: {float(current):.3f}"
        self.wait_count += 1
        if self.wait_count >= self.patience:
            return True, (f"Monitored metric {self.monitor} did not improve in the last {self.wait_count} records. "
                          f"Best score: {float(self.best_score):.3f}. Signaling Trainer to stop.")
        return False, None

    def state_dict(self) -> dict[str, Any]:
        return {"wait_count": self.wait_count, "stopped_epoch": self.stopped_epoch, "best_score": self.best_score,
                "patience": self.patience}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.wait_count = int(state_dict["wait_count"])
        self.stopped_epoch = int(state_dict["stopped_epoch"])
        self.best_score = torch.as_tensor(state_dict["best_score"])
        self.patience = int(state_dict["patience"])
