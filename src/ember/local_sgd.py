"""Local SGD: each process steps on its own gradients and the model parameters are averaged every N steps
(Accelerate's ``accelerate.local_sgd.LocalSGD``; import it from ``ember.local_sgd``).

>>> import torch
>>> from ember import Accelerator
>>> accelerator = Accelerator(cpu=True, verbose=False)
>>> model = accelerator.prepare(torch.nn.Linear(2, 1))
>>> with LocalSGD(accelerator=accelerator, model=model, local_sgd_steps=4) as local_sgd:
...     for _ in range(8):
...         local_sgd.step()  # after optimizer.step(); parameters are averaged at steps 4 and 8
>>> local_sgd.num_steps, local_sgd.averages
(8, 2)
"""

from __future__ import annotations

import contextlib
from types import TracebackType
from typing import TYPE_CHECKING, Any

import torch

from ember._errors import EmberConfigError

if TYPE_CHECKING:
    from ember.accelerator import Accelerator


class LocalSGD:
    """Train without a gradient all-reduce and average the parameters every ``local_sgd_steps`` optimizer steps.

    Inside the ``with`` block the model's gradient synchronisation is off (``accelerator.no_sync``); call
    :meth:`step` after each ``optimizer.step()``. Leaving the block averages once more, so every process ends with
    the same weights. ``enabled=False`` (or a single process) makes it a no-op.
    """

    def __init__(self, accelerator: Accelerator, model: torch.nn.Module, local_sgd_steps: int,
                 enabled: bool = True) -> None:
        if not isinstance(local_sgd_steps, int) or local_sgd_steps < 1:
            raise EmberConfigError(f"LocalSGD(local_sgd_steps={local_sgd_steps!r}) must be an integer >= 1.")
        self.accelerator, self.model, self.local_sgd_steps = accelerator, model, local_sgd_steps
        self.enabled = enabled and accelerator.num_processes > 1
        self.num_steps = 0
        self.averages = 0
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> LocalSGD:
        if self.enabled:
            self._stack.enter_context(self.accelerator.no_sync(self.model))
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> Any:
        self._stack.close()
        if kind is None and self.num_steps % self.local_sgd_steps:  # steps since the last average
            self._average()
        return None

    def step(self) -> None:
        """Count one optimizer step; average the parameters every ``local_sgd_steps`` of them."""
        self.num_steps += 1
        if self.num_steps % self.local_sgd_steps == 0:
            self._average()

    def _average(self) -> None:
        self.averages += 1
        if not self.enabled:
            return
        self.accelerator.wait_for_everyone()
        with torch.no_grad():
            for param in self.accelerator.unwrap_model(self.model).parameters():
                param.copy_(self.accelerator.reduce(param.detach(), "mean"))
