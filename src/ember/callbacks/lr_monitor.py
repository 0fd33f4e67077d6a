"""``LearningRateMonitor``: log each optimizer's learning rate (and momentum / weight decay) to the loggers.

Names follow Lightning: ``lr-AdamW`` (``lr-AdamW/pg1``, ``lr-AdamW/pg2`` with several parameter groups,
``lr-AdamW-1`` for a second AdamW; a scheduler config's ``name`` replaces the ``lr-<Optimizer>`` part),
``lr-AdamW-momentum`` and ``lr-AdamW-weight_decay``. Values are read from ``param_groups`` on the host — no
device synchronisation.

>>> from ember.callbacks import LearningRateMonitor
>>> LearningRateMonitor(logging_interval="step").logging_interval
'step'
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from ember._errors import EmberConfigError, unknown_value
from ember.callbacks.base import Callback

if TYPE_CHECKING:
    from ember.trainer.module import Module
    from ember.trainer.trainer import Trainer


def _raw(optimizer: Any) -> Any:
    """The user's optimizer inside ember's wrappers."""
    while hasattr(optimizer, "optimizer") and optimizer is not getattr(optimizer, "optimizer", None):
        optimizer = optimizer.optimizer
    return optimizer


class LearningRateMonitor(Callback):
    """``logging_interval``: "step" (every logged step), "epoch" (each epoch start) or None (as each
    scheduler's interval; optimizers without a scheduler every logged step)."""

    def __init__(self, logging_interval: str | None = None, log_momentum: bool = False, log_weight_decay: bool = False) -> None:
        if logging_interval not in (None, "step", "epoch"):
            raise unknown_value("LearningRateMonitor logging_interval", logging_interval, ["step", "epoch"])
        self.logging_interval = logging_interval
        self.log_momentum = log_momentum
        self.log_weight_decay = log_weight_decay
        self.lrs: dict[str, list[float]] = {}
        self._last_step: int | None = None

    def on_train_start(self, trainer: Trainer, pl_module: Module) -> None:
        if not trainer.loggers:
            raise EmberConfigError("LearningRateMonitor needs a logger: pass logger=True (or a Logger) to the Trainer.")

    def on_train_batch_start(self, trainer: Trainer, pl_module: Module, batch: Any, batch_idx: int) -> None:
        from ember.trainer._loops import should_update_logs

        step = trainer._loop.log_step
        if self.logging_interval != "epoch" and should_update_logs(trainer) and step != self._last_step:
            self._last_step = step  # once per optimizer step, not per accumulated micro-batch
            self._log(trainer, "step" if self.logging_interval is None else "any")

    def on_train_epoch_start(self, trainer: Trainer, pl_module: Module) -> None:
        if self.logging_interval != "step":
            self._log(trainer, "epoch" if self.logging_interval is None else "any")

    def _names(self, trainer: Trainer) -> list[tuple[Any, str, str | None]]:
        """(optimizer, base name, scheduler interval or None) for every optimizer, scheduled ones first."""
        entries: list[tuple[Any, str | None, str | None]] = []
        scheduled = set()
        for config in trainer.lr_scheduler_configs:
            opt = _raw(getattr(config.scheduler, "optimizer", None))
            scheduled.add(id(opt))
            entries.append((opt, config.name, config.interval))
        entries += [(_raw(o), None, None) for o in trainer.optimizers if id(_raw(o)) not in scheduled]
        counts: Counter[str] = Counter()
        named = []
        for opt, name, interval in entries:
            base = name or f"lr-{type(opt).__name__}"
            counts[base] += 1
            named.append((opt, base if counts[base] == 1 else f"{base}-{counts[base] - 1}", interval))
        return named

    def _stats(self, trainer: Trainer, interval: str) -> dict[str, float]:
        stats: dict[str, float] = {}
        for opt, base, sched_interval in self._names(trainer):
            if sched_interval is not None and interval not in ("any", sched_interval):
                continue
            groups = opt.param_groups
            for i, group in enumerate(groups):
                name = base if len(groups) == 1 else f"{base}/pg{i + 1}"
                stats[name] = float(group["lr"])
                if self.log_momentum:
                    momentum = group.get("betas", (group.get("momentum", 0.0),))[0]
                    stats[f"{name}-momentum"] = float(momentum)
                if self.log_weight_decay:
                    stats[f"{name}-weight_decay"] = float(group.get("weight_decay", 0.0))
        return stats

    def _log(self, trainer: Trainer, interval: str) -> None:
        stats = self._stats(trainer, interval)
        for name, value in stats.items():
            self.lrs.setdefault(name, []).append(value)
        if stats and trainer.is_global_zero:
            step = trainer._loop.log_step
            for logger in trainer.loggers:
                logger.log_metrics(stats, step=step)
