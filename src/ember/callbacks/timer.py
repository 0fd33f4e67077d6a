"""``Timer``: track time spent in each loop and stop training when a duration is reached.

``Trainer(max_time=...)`` is this callback (``Timer(duration=max_time, interval="step")``), added unless the
callbacks already hold a Timer. The elapsed training time is saved in checkpoints, so a resumed run counts the
time the interrupted one already spent.

Stopping sets ``trainer.should_stop``; like every early stop it waits for ``min_epochs`` / ``min_steps``. With
several processes each check agrees across ranks (one tiny all-reduce per check: every step with
``interval="step"`` — on GPUs a host sync —, every epoch with ``"epoch"``), so all ranks stop at the same step;
on one process a check reads the host clock only.

>>> from datetime import timedelta
>>> from ember.callbacks import Timer
>>> Timer(duration="00:12:00:00").duration == timedelta(hours=12).total_seconds()
True
>>> Timer(duration={"minutes": 5}, interval="epoch").time_remaining()
300.0
"""

from __future__ import annotations

import datetime
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from ember._errors import EmberConfigError, unknown_value
from ember._log import info as _log_info
from ember.callbacks.base import Callback

if TYPE_CHECKING:
    from ember.trainer.module import Module
    from ember.trainer.trainer import Trainer

STAGES = ("train", "sanity_check", "validate", "test", "predict")
INTERVALS = ("step", "epoch")


def parse_duration(value: Any, argument: str = "duration") -> float | None:
    """Seconds from ``None``, ``"DD:HH:MM:SS"``, a ``timedelta`` or a dict of ``timedelta`` arguments.

    >>> parse_duration("01:00:00:30"), parse_duration({"hours": 1}), parse_duration(None)
    (86430.0, 3600.0, None)
    """
    if value is None:
        return None
    if isinstance(value, datetime.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, Mapping):
        try:
            seconds = datetime.timedelta(**value).total_seconds()
        except TypeError as err:
            raise EmberConfigError(f"{argument}={dict(value)!r}: {err}; use keys of datetime.timedelta "
                                   "(days, hours, minutes, seconds, ...).") from err
    elif isinstance(value, str) and re.fullmatch(r"\d+:\d{1,2}:\d{1,2}:\d{1,2}", value.strip()):
        days, hours, minutes, secs = (int(p) for p in value.strip().split(":"))
        seconds = datetime.timedelta(days=days, hours=hours, minutes=minutes, seconds=secs).total_seconds()
    else:
        raise EmberConfigError(
            f'{argument}={value!r}: use "DD:HH:MM:SS" (e.g. "00:12:00:00"), a datetime.timedelta or a dict '
            'like {"hours": 12}.'
        )
    if seconds < 0:
        raise EmberConfigError(f"{argument}={value!r} is negative.")
    return seconds


class Timer(Callback):
    """Time each loop; stop training once ``duration`` has passed.

    Args:
        duration: ``"DD:HH:MM:SS"``, a ``datetime.timedelta``, a dict of ``timedelta`` arguments, or None
            (only measure).
        interval: Check after every optimizer step (``"step"``; with gradient accumulation at the end of each
            window, so no accumulated gradients are dropped) or every training epoch (``"epoch"``).
        verbose: Print a line on global rank 0 when the time limit stops training.

    ``time_elapsed(stage)``, ``time_remaining(stage)``, ``start_time(stage)`` and ``end_time(stage)`` take a
    stage name: ``"train"`` (default), ``"validate"``, ``"test"``, ``"predict"`` or ``"sanity_check"``;
    times are ``time.monotonic()`` seconds.
    """

    def __init__(self, duration: str | datetime.timedelta | Mapping[str, int] | None = None,
                 interval: str = "step", verbose: bool = True) -> None:
        if interval not in INTERVALS:
            raise unknown_value("Timer interval", interval, INTERVALS)
        self.duration = parse_duration(duration)
        self.interval = interval
        self.verbose = verbose
        self._start: dict[str, float | None] = dict.fromkeys(STAGES)
        self._end: dict[str, float | None] = dict.fromkeys(STAGES)
        self._offset = 0.0  # training seconds of the run(s) this one resumed

    # queries ------------------------------------------------------------------------------------------
    def _stage(self, stage: str) -> str:
        if stage not in STAGES:
            raise unknown_value("Timer stage", stage, STAGES)
        return stage

    def start_time(self, stage: str = "train") -> float | None:
        """When ``stage`` last started (``time.monotonic()``), or None."""
        return self._start[self._stage(stage)]

    def end_time(self, stage: str = "train") -> float | None:
        """When ``stage`` last ended (``time.monotonic()``), or None while it runs / before it ran."""
        return self._end[self._stage(stage)]

    def time_elapsed(self, stage: str = "train") -> float:
        """Seconds spent in ``stage`` (for ``"train"``, including a resumed run's earlier time)."""
        start, end = self.start_time(stage), self.end_time(stage)
        offset = self._offset if stage == "train" else 0.0
        if start is None:
            return offset
        return (time.monotonic() if end is None else end) - start + offset

    def time_remaining(self, stage: str = "train") -> float | None:
        """``duration - time_elapsed(stage)``, or None without a duration."""
        return None if self.duration is None else self.duration - self.time_elapsed(stage)

    # hooks --------------------------------------------------------------------------------------------
    def _begin(self, stage: str) -> None:
        self._start[stage], self._end[stage] = time.monotonic(), None

    def _finish(self, stage: str) -> None:
        self._end[stage] = time.monotonic()

    def on_train_start(self, trainer: Trainer, pl_module: Module) -> None:
        self._begin("train")

    def on_train_end(self, trainer: Trainer, pl_module: Module) -> None:
        self._finish("train")

    def on_validation_start(self, trainer: Trainer, pl_module: Module) -> None:
        self._begin("sanity_check" if trainer.sanity_checking else "validate")

    def on_validation_end(self, trainer: Trainer, pl_module: Module) -> None:
        self._finish("sanity_check" if trainer.sanity_checking else "validate")

    def on_test_start(self, trainer: Trainer, pl_module: Module) -> None:
        self._begin("test")

    def on_test_end(self, trainer: Trainer, pl_module: Module) -> None:
        self._finish("test")

    def on_predict_start(self, trainer: Trainer, pl_module: Module) -> None:
        self._begin("predict")

    def on_predict_end(self, trainer: Trainer, pl_module: Module) -> None:
        self._finish("predict")

    def on_fit_start(self, trainer: Trainer, pl_module: Module) -> None:
        # a resumed run whose time is already used up stops before its first step
        if self.duration is not None:
            self._check(trainer)

    def on_train_batch_end(self, trainer: Trainer, pl_module: Module, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        at_step = trainer.accelerator.sync_gradients or not pl_module.automatic_optimization
        if self.interval == "step" and self.duration is not None and at_step:  # not inside an accumulation window
            self._check(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: Module) -> None:
        if self.interval == "epoch" and self.duration is not None:
            self._check(trainer)

    def _check(self, trainer: Trainer) -> None:
        assert self.duration is not None
        over = self.time_elapsed("train") >= self.duration
        if trainer.world_size > 1:  # clocks differ between ranks: stop everywhere when any rank is over
            flag = torch.tensor(float(over), device=trainer.accelerator.device)
            over = bool(trainer._reduce(flag, "max") > 0)
        if not over:
            return
        trainer.should_stop = True
        if self.verbose and trainer.is_global_zero:
            elapsed = datetime.timedelta(seconds=int(self.time_elapsed("train")))
            _log_info(f"Time limit reached. Elapsed time is {elapsed}. Signaling Trainer to stop.")

    # checkpoints --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"time_elapsed": {stage: self.time_elapsed(stage) for stage in STAGES}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._offset = float(state_dict.get("time_elapsed", {}).get("train", 0.0))
