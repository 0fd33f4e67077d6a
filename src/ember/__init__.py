"""ember: PyTorch training from your own loop to a full trainer, on one shared core.

>>> from ember import Accelerator          # the minimal layer: keep your loop
>>> import ember as L                      # the structured layer: L.Module, L.Trainer

Public names are imported lazily, so ``import ember`` costs about as much as ``import torch``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "Accelerator": "ember.accelerator",
    "set_seed": "ember._seed",
    "skip_first_batches": "ember.data",
    "seed_everything": "ember.trainer.seed",
    "DistributedDataParallelKwargs": "ember._handlers",
    "InitProcessGroupKwargs": "ember._handlers",
    "GradScalerKwargs": "ember._handlers",
    "DDPCommunicationHookType": "ember._handlers",
    "DistributedType": "ember._kinds",
    "DataLoaderConfiguration": "ember.utils",
    "ProfileKwargs": "ember.utils",
    "find_executable_batch_size": "ember.utils",
    "EmberConfigError": "ember._errors",
    "Precision": "ember.precision",
    "Strategy": "ember.strategies.base",
    "DDPStrategy": "ember.strategies.ddp",
    "FSDPStrategy": "ember.strategies.fsdp",
    "FullyShardedDataParallelPlugin": "ember.strategies._fsdp_config",
    "DeepSpeedStrategy": "ember.strategies.deepspeed",
    "DeepSpeedPlugin": "ember.strategies.deepspeed",
    "SingleDeviceStrategy": "ember.strategies.single",
    "ProcessInfo": "ember._env",
    "Module": "ember.trainer.module",
    "LightningModule": "ember.trainer.module",
    "DataModule": "ember.trainer.datamodule",
    "LightningDataModule": "ember.trainer.datamodule",
    "Trainer": "ember.trainer.trainer",
    "Callback": "ember.callbacks.base",
}
_SUBMODULES = ("callbacks", "loggers", "checkpoint", "data", "precision", "strategies", "profilers", "trainer",
               "faults", "utils", "local_sgd")

__all__ = sorted([*_EXPORTS, "__version__"])

if TYPE_CHECKING:
    from ember._env import ProcessInfo
    from ember._errors import EmberConfigError
    from ember._handlers import (
        DDPCommunicationHookType,
        DistributedDataParallelKwargs,
        GradScalerKwargs,
        InitProcessGroupKwargs,
    )
    from ember._kinds import DistributedType
    from ember._seed import set_seed
    from ember.accelerator import Accelerator
    from ember.callbacks.base import Callback
    from ember.data import skip_first_batches
    from ember.precision import Precision
    from ember.strategies._fsdp_config import FullyShardedDataParallelPlugin
    from ember.strategies.base import Strategy
    from ember.strategies.ddp import DDPStrategy
    from ember.strategies.deepspeed import DeepSpeedPlugin, DeepSpeedStrategy
    from ember.strategies.fsdp import FSDPStrategy
    from ember.strategies.single import SingleDeviceStrategy
    from ember.trainer.datamodule import DataModule, LightningDataModule
    from ember.trainer.module import LightningModule, Module
    from ember.trainer.seed import seed_everything
    from ember.trainer.trainer import Trainer
    from ember.utils import DataLoaderConfiguration, ProfileKwargs, find_executable_batch_size


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"ember.{name}")
    raise AttributeError(f"module 'ember' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*__all__, *_SUBMODULES])
