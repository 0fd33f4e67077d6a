"""Strategy names → classes. A new strategy is one line here."""

from __future__ import annotations

from collections.abc import Callable

from ember._errors import unknown_value
from ember.strategies.base import SingleDeviceStrategy, Strategy
from ember.strategies.ddp import DDPStrategy

STRATEGIES: dict[str, Callable[[], Strategy]] = {
    "single": SingleDeviceStrategy,
    "single_device": SingleDeviceStrategy,
    "ddp": DDPStrategy,
    "ddp_find_unused_parameters_true": lambda: DDPStrategy(find_unused_parameters=True),
}

#: accepted now, built in a later release through the same interface
PLANNED = ("fsdp", "deepspeed", "deepspeed_stage_1", "deepspeed_stage_2", "deepspeed_stage_3")


def resolve_strategy(value: str | Strategy | None, world_size: int) -> Strategy:
    """Pick the strategy object for ``value`` ("auto" → DDP when world size > 1, else single device)."""
    if isinstance(value, Strategy):
        return value
    name = "auto" if value is None else str(value).lower()
    if name == "auto":
        return DDPStrategy() if world_size > 1 else SingleDeviceStrategy()
    if name in PLANNED:
        raise NotImplementedError(
            f"strategy={value!r} is not available in this version of ember yet; use 'ddp' or 'auto'."
        )
    if name not in STRATEGIES:
        raise unknown_value("strategy", value, ["auto", *STRATEGIES, *PLANNED])
    return STRATEGIES[name]()
