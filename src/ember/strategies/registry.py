"""Strategy names → factories: the one list that the Accelerator, the Trainer, ``ember config`` and ``ember launch``
read. A new strategy is a new file plus one :func:`register_strategy` line (here, or in the user's own code).

>>> "ddp" in strategy_names()
True
"""

from __future__ import annotations

from collections.abc import Callable

from ember._errors import unknown_value
from ember.strategies.base import Strategy

StrategyFactory = Callable[[], Strategy]

_REGISTRY: dict[str, StrategyFactory] = {}


def register_strategy(name: str, factory: StrategyFactory) -> None:
    """Make ``strategy=name`` build ``factory()`` in both layers and in ``ember launch`` / ``ember config``.

    >>> from ember.strategies import DDPStrategy
    >>> register_strategy("ddp_static", lambda: DDPStrategy(static_graph=True))
    >>> resolve_strategy("ddp_static", world_size=2).options.static_graph
    True
    """
    _REGISTRY[name.lower()] = factory


def strategy_names() -> list[str]:
    """Every accepted ``strategy=`` string, ``"auto"`` first."""
    return ["auto", *_REGISTRY]


def resolve_strategy(value: str | Strategy | None, world_size: int) -> Strategy:
    """The strategy object for ``value`` ("auto": DDP when world size > 1, else one device)."""
    if isinstance(value, Strategy):
        return value
    name = "auto" if value is None else str(value).lower()
    if name == "auto":
        name = "ddp" if world_size > 1 else "single"
    if name not in _REGISTRY:
        raise unknown_value("strategy", value, strategy_names())
    return _REGISTRY[name]()


def _builtin() -> None:
    from ember.strategies.ddp import DDPStrategy
    from ember.strategies.fsdp import FSDPStrategy
    from ember.strategies.single import SingleDeviceStrategy

    register_strategy("single", SingleDeviceStrategy)
    register_strategy("single_device", SingleDeviceStrategy)
    register_strategy("ddp", DDPStrategy)
    register_strategy("ddp_find_unused_parameters_true", lambda: DDPStrategy(find_unused_parameters=True))
    register_strategy("fsdp", FSDPStrategy)

    from ember.strategies.deepspeed import DeepSpeedStrategy  # imports DeepSpeed only when an engine is built

    register_strategy("deepspeed", DeepSpeedStrategy)  # Lightning's default: ZeRO stage 2
    register_strategy("deepspeed_stage_1", lambda: DeepSpeedStrategy(stage=1))
    register_strategy("deepspeed_stage_2", lambda: DeepSpeedStrategy(stage=2))
    register_strategy("deepspeed_stage_3", lambda: DeepSpeedStrategy(stage=3))
    register_strategy("deepspeed_stage_2_offload", lambda: DeepSpeedStrategy(stage=2, offload_optimizer=True))
    register_strategy("deepspeed_stage_3_offload",
                      lambda: DeepSpeedStrategy(stage=3, offload_optimizer=True, offload_parameters=True))


_builtin()
