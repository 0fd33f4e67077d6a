"""``GradientAccumulationScheduler``: change ``accumulate_grad_batches`` from one epoch to the next.

``scheduling`` maps a (zero-based) epoch to the number of micro-batches per optimizer step from that epoch on;
epochs before the first key accumulate 1 (as Lightning). At every training epoch start the callback sets
``trainer.accumulate_grad_batches``, which sets the Accelerator's ``gradient_state.accumulation_steps`` — the
value that decides when the optimizer steps and how losses are scaled (see :mod:`ember._stepping`). The previous
epoch always ended with a step (the last, partial window of an epoch steps), so the new factor starts with a
fresh window.

It needs automatic optimisation and ``Trainer(accumulate_grad_batches=1)`` (the default): both are checked
before any data or model work. ``trainer.estimated_stepping_batches`` assumes a constant factor, so a scheduler
built from it in ``configure_optimizers`` sees the factor of epoch 0.

>>> from ember.callbacks import GradientAccumulationScheduler
>>> scheduler = GradientAccumulationScheduler(scheduling={0: 8, 4: 4, 8: 1})
>>> [scheduler.get_accumulate_grad_batches(epoch) for epoch in (0, 3, 4, 7, 8, 100)]
[8, 8, 4, 4, 1, 1]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from ember._errors import EmberConfigError
from ember.callbacks.base import Callback

if TYPE_CHECKING:
    from ember.trainer.module import Module
    from ember.trainer.trainer import Trainer


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class GradientAccumulationScheduler(Callback):
    """Accumulate ``scheduling[e]`` micro-batches per optimizer step from epoch ``e`` on.

    Args:
        scheduling: ``{epoch: factor}`` with int epochs >= 0 and int factors >= 1, e.g. ``{0: 8, 4: 4, 8: 1}``.
    """

    def __init__(self, scheduling: Mapping[int, int]) -> None:
        if not isinstance(scheduling, Mapping) or not scheduling:
            raise EmberConfigError(
                f"GradientAccumulationScheduler(scheduling={scheduling!r}) needs a non-empty dict "
                "{epoch: accumulate_grad_batches}, e.g. {0: 8, 4: 4, 8: 1}."
            )
        bad_keys = [k for k in scheduling if not _is_int(k) or k < 0]
        if bad_keys:
            raise EmberConfigError(
                f"GradientAccumulationScheduler: epochs must be ints >= 0 (zero-based); got {bad_keys} in "
                f"{dict(scheduling)!r}."
            )
        bad_values = {k: v for k, v in scheduling.items() if not _is_int(v) or v < 1}
        if bad_values:
            raise EmberConfigError(
                f"GradientAccumulationScheduler: accumulation factors must be ints >= 1; got {bad_values} in "
                f"{dict(scheduling)!r}."
            )
        self.scheduling = dict(scheduling)
        self.scheduling.setdefault(0, 1)
        self.epochs = sorted(self.scheduling)
        self._restore: int | None = None

    def going_to_accumulate_grad_batches(self) -> bool:
        """Whether any epoch accumulates more than one micro-batch."""
        return any(v > 1 for v in self.scheduling.values())

    def get_accumulate_grad_batches(self, epoch: int) -> int:
        """The factor for ``epoch``: the value of the largest scheduled epoch <= ``epoch``."""
        return next(self.scheduling[e] for e in reversed(self.epochs) if epoch >= e)

    def setup(self, trainer: Trainer, pl_module: Module, stage: str) -> None:
        if stage != "fit":
            return
        if trainer.accumulate_grad_batches != 1:
            raise EmberConfigError(
                f"Trainer(accumulate_grad_batches={trainer.accumulate_grad_batches}) and a "
                "GradientAccumulationScheduler both set the accumulation: remove accumulate_grad_batches from the "
                "Trainer (or remove the callback)."
            )
        if not pl_module.automatic_optimization:
            raise EmberConfigError(
                f"GradientAccumulationScheduler needs automatic optimisation, but {type(pl_module).__name__}."
                "automatic_optimization is False: accumulate in training_step yourself, or remove the callback."
            )
        self._restore = trainer.accumulate_grad_batches

    def on_train_epoch_start(self, trainer: Trainer, pl_module: Module) -> None:
        trainer.accumulate_grad_batches = self.get_accumulate_grad_batches(trainer.current_epoch)

    def _reset(self, trainer: Trainer) -> None:
        """Give the Trainer its own value back, so the next ``fit`` starts as configured."""
        if self._restore is not None:
            trainer.accumulate_grad_batches, self._restore = self._restore, None

    def teardown(self, trainer: Trainer, pl_module: Module, stage: str) -> None:
        self._reset(trainer)

    def on_exception(self, trainer: Trainer, pl_module: Module, exception: BaseException) -> None:
        self._reset(trainer)
