"""Strategies: how a model is placed and synchronised. See :class:`ember.strategies.base.Strategy`."""

from ember.strategies.base import SingleDeviceStrategy, Strategy
from ember.strategies.ddp import DDPOptions, DDPStrategy
from ember.strategies.registry import STRATEGIES, resolve_strategy

__all__ = ["STRATEGIES", "DDPOptions", "DDPStrategy", "SingleDeviceStrategy", "Strategy", "resolve_strategy"]
