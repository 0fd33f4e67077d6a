"""``ModelSummary``: a table of the model's layers, printed once when ``fit`` starts (global rank 0).

``Trainer(enable_model_summary=True)`` (the default) adds ``ModelSummary()`` unless the callbacks already hold
one. The table lists every submodule down to ``max_depth`` levels (``-1``: all, ``0``: no table) with its
type, its parameter count and how many of those are trainable; below it the totals and the parameters'
size in MB (their real storage: ``numel * element_size``, so a bf16 model shows half the size of a float32
one; buffers are not counted). Shared parameters are counted once in the totals.

>>> import torch
>>> from ember.callbacks import ModelSummary
>>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
>>> print(ModelSummary(max_depth=1).table(model))  # doctest: +NORMALIZE_WHITESPACE
  | Name | Type   | Params | Trainable
--------------------------------------
0 | 0    | Linear | 40     | 40
1 | 1    | ReLU   | 0      | 0
2 | 2    | Linear | 9      | 9
--------------------------------------
49        Trainable params
0         Non-trainable params
49        Total params
0.000     Total estimated model params size (MB)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ember._errors import EmberConfigError
from ember.callbacks.base import Callback

if TYPE_CHECKING:
    from ember.trainer.module import Module
    from ember.trainer.trainer import Trainer

_UNITS = ("", "K", "M", "B", "T")


def human_count(number: int) -> str:
    """``1234`` → ``"1.2 K"``, ``5_000_000`` → ``"5.0 M"`` (counts below 1000 stay exact).

    >>> human_count(999), human_count(1234), human_count(5_000_000)
    ('999', '1.2 K', '5.0 M')
    """
    value, unit = float(number), 0
    while abs(value) >= 1000 and unit < len(_UNITS) - 1:
        value, unit = value / 1000, unit + 1
    return str(number) if unit == 0 else f"{value:.1f} {_UNITS[unit]}"


def _numel(param: torch.Tensor) -> int:
    return 0 if isinstance(param, torch.nn.parameter.UninitializedParameter) else param.numel()


def _counts(params: Any) -> tuple[int, int]:
    """(total, trainable) element counts of ``params``."""
    total = trainable = 0
    for p in params:
        n = _numel(p)
        total += n
        trainable += n if p.requires_grad else 0
    return total, trainable


class ModelSummary(Callback):
    """Print a layer table at ``fit`` start. ``max_depth``: nesting levels shown (``-1`` all, ``0`` none).

    After a fit, ``total_parameters``, ``trainable_parameters`` and ``model_size`` (MB) hold the totals.
    """

    def __init__(self, max_depth: int = 1) -> None:
        if isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < -1:
            raise EmberConfigError(f"ModelSummary(max_depth={max_depth!r}) must be an int >= -1 (-1: every level).")
        self._max_depth = max_depth
        self.total_parameters = 0
        self.trainable_parameters = 0
        self.model_size = 0.0

    def rows(self, model: torch.nn.Module) -> list[tuple[str, str, int, int]]:
        """``(name, type, params, trainable params)`` for every submodule within ``max_depth``."""
        out = []
        for name, module in model.named_modules():
            depth = name.count(".") + 1
            if not name or (self._max_depth != -1 and depth > self._max_depth):
                continue
            total, trainable = _counts(module.parameters())
            out.append((name, type(module).__name__, total, trainable))
        return out

    def table(self, model: torch.nn.Module) -> str:
        """The summary text (also stores the totals on ``self``)."""
        params = list(model.parameters())  # unique parameters: shared ones once
        self.total_parameters, self.trainable_parameters = _counts(params)
        self.model_size = sum(_numel(p) * p.element_size() for p in params) / 1e6
        header = ["", "Name", "Type", "Params", "Trainable"]
        body = [[str(i), name, kind, human_count(n), human_count(t)]
                for i, (name, kind, n, t) in enumerate(self.rows(model))]
        widths = [max(len(row[c]) for row in [header, *body]) for c in range(len(header))]
        lines = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *body]]
        rule = "-" * max(len(line) for line in lines)
        totals = [
            (self.trainable_parameters, "Trainable params"),
            (self.total_parameters - self.trainable_parameters, "Non-trainable params"),
            (self.total_parameters, "Total params"),
        ]
        footer = [f"{human_count(n):<10}{label}" for n, label in totals]
        footer.append(f"{self.model_size:<10.3f}Total estimated model params size (MB)")
        return "\n".join([lines[0], rule, *lines[1:], rule, *footer])

    def on_fit_start(self, trainer: Trainer, pl_module: Module) -> None:
        if self._max_depth == 0:
            return
        text = self.table(pl_module)
        if trainer.is_global_zero:
            print(text)
