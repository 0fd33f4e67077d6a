"""One process, one device."""

from __future__ import annotations

import torch

from ember.strategies.base import Reshardable, Strategy


class SingleDeviceStrategy(Strategy, Reshardable):
    """One process on one device: the module is moved there, nothing is wrapped.

    >>> SingleDeviceStrategy().multiprocess
    False
    """

    name = "single"
    multiprocess = False

    def setup_module(self, module: torch.nn.Module) -> torch.nn.Module:
        return module

    def describe(self) -> str:
        return f"model on {self.device}"
