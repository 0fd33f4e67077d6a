"""Strategies: how a model is placed, stepped, synchronised and saved. See :class:`ember.strategies.Strategy`.

Names are registered in :mod:`ember.strategies.registry`; :func:`register_strategy` adds one.
"""

from ember.strategies._fsdp_config import FullyShardedDataParallelPlugin
from ember.strategies.base import (
    BackwardSyncControl,
    ForwardRedirection,
    GradientHolder,
    Reshardable,
    Strategy,
    TrainingSettings,
)
from ember.strategies.ddp import DDPOptions, DDPStrategy
from ember.strategies.deepspeed import DeepSpeedPlugin, DeepSpeedStrategy
from ember.strategies.fsdp import FSDPStrategy
from ember.strategies.registry import register_strategy, resolve_strategy, strategy_names
from ember.strategies.single import SingleDeviceStrategy
from ember.strategies.topology import Topology

__all__ = [
    "BackwardSyncControl",
    "DDPOptions",
    "DDPStrategy",
    "DeepSpeedPlugin",
    "DeepSpeedStrategy",
    "FSDPStrategy",
    "ForwardRedirection",
    "FullyShardedDataParallelPlugin",
    "GradientHolder",
    "Reshardable",
    "SingleDeviceStrategy",
    "Strategy",
    "Topology",
    "TrainingSettings",
    "register_strategy",
    "resolve_strategy",
    "strategy_names",
]
