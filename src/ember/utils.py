"""The everyday names of ``accelerate.utils``, so ported scripts only change their import.

>>> from ember.utils import DistributedType, ProjectConfiguration, set_seed
>>> DistributedType.MULTI_GPU == "MULTI_GPU"
True
>>> ProjectConfiguration(project_dir="runs", total_limit=2).total_limit
2
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import importlib
import importlib.util
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ember._handlers import (
    DDPCommunicationHookType,
    DistributedDataParallelKwargs,
    GradScalerKwargs,
    InitProcessGroupKwargs,
)
from ember._kinds import DistributedType, PrecisionType
from ember._seed import set_seed
from ember.data import find_batch_size
from ember.data import move_to_device as send_to_device

__all__ = [
    "DDPCommunicationHookType", "DataLoaderConfiguration", "DeepSpeedPlugin",  # noqa: F822 (lazy)
    "DistributedDataParallelKwargs",
    "DistributedType", "FullyShardedDataParallelPlugin", "GradScalerKwargs", "InitProcessGroupKwargs", "LoggerType",
    "PrecisionType", "ProfileKwargs", "ProjectConfiguration", "find_batch_size", "find_executable_batch_size",
    "is_bf16_available", "is_datasets_available", "is_deepspeed_available", "is_mlflow_available",
    "is_schedulefree_available", "is_tensorboard_available", "is_transformers_available", "is_wandb_available",
    "is_xpu_available",
    "release_memory", "send_to_device", "set_seed",
]

_LAZY = {"FullyShardedDataParallelPlugin": "ember.strategies._fsdp_config", "DeepSpeedPlugin": "ember.strategies.deepspeed"}
if TYPE_CHECKING:
    from ember.strategies._fsdp_config import FullyShardedDataParallelPlugin


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ember.utils' has no attribute {name!r}")


class LoggerType:
    """Tracker names for ``Accelerator(log_with=...)`` (Accelerate's ``LoggerType``)."""

    ALL = "all"
    TENSORBOARD = "tensorboard"
    WANDB = "wandb"
    MLFLOW = "mlflow"
    CSV = "csv"


@dataclass
class ProjectConfiguration:
    """Where a run lives and how its checkpoints are kept: ``Accelerator(project_config=...)``.

    ``project_dir`` is the Accelerator's ``project_dir``; ``total_limit`` keeps that many checkpoints (the oldest
    are deleted only after a new one is committed); ``automatic_checkpoint_naming`` is always on in ember
    (``<project_dir>/checkpoints/step-XXXXXXXX``); ``iteration`` counts the saves of this run.
    """

    project_dir: str | None = None
    logging_dir: str | None = None
    automatic_checkpoint_naming: bool = False
    total_limit: int | None = None
    iteration: int = 0
    save_on_each_node: bool = False

    def set_directories(self, project_dir: str | None = None) -> None:
        self.project_dir = project_dir
        if self.logging_dir is None:
            self.logging_dir = project_dir


@dataclass
class DataLoaderConfiguration:
    """How ``prepare`` treats dataloaders: ``Accelerator(dataloader_config=...)``.

    ``split_batches=True``: the loader's batch size is the *global* batch, split over the processes (it must divide
    evenly). ``even_batches`` as the Accelerator's argument. Seedable samplers, non-blocking copies and resumable
    (stateful) loaders are what ember always does, so those flags are accepted as they are. ``dispatch_batches``
    (rank 0 reads and sends every batch) is not supported.
    """

    split_batches: bool = False
    dispatch_batches: bool | None = None
    even_batches: bool = True
    use_seedable_sampler: bool = False
    data_seed: int | None = None
    non_blocking: bool = False
    use_stateful_dataloader: bool = False


@dataclass
class ProfileKwargs:
    """Options for ``with accelerator.profile(ProfileKwargs(...)) as prof`` (``torch.profiler.profile``'s)."""

    activities: list[str] | None = None
    schedule_option: dict[str, int] | None = None
    on_trace_ready: Callable[..., Any] | None = None
    record_shapes: bool = False
    profile_memory: bool = False
    with_stack: bool = False
    with_flops: bool = False
    with_modules: bool = False
    output_trace_dir: str | None = None

    def to_kwargs(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def _installed(module: str) -> Callable[[], bool]:
    return lambda: importlib.util.find_spec(module) is not None


is_deepspeed_available = _installed("deepspeed")
is_transformers_available = _installed("transformers")
is_datasets_available = _installed("datasets")
is_tensorboard_available = _installed("tensorboard")
is_wandb_available = _installed("wandb")
is_mlflow_available = _installed("mlflow")
is_schedulefree_available = _installed("schedulefree")


def is_xpu_available(check_device: bool = False) -> bool:
    """An Intel XPU is usable through ``torch.xpu`` (ember trains on CPUs and CUDA GPUs; scripts branch on this)."""
    import torch

    return bool(getattr(torch, "xpu", None) is not None and torch.xpu.is_available())


def is_bf16_available(ignore_tpu: bool = False) -> bool:
    """bfloat16 works here (CPU autocast always; on CUDA when the GPU supports it)."""
    import torch

    return not torch.cuda.is_available() or bool(torch.cuda.is_bf16_supported())


def release_memory(*objects: Any) -> list[None]:
    """Drop references, collect garbage and empty the CUDA cache; returns one None per argument."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return [None for _ in objects]


def _is_oom(error: BaseException) -> bool:
    text = str(error)
    return isinstance(error, MemoryError) or (isinstance(error, RuntimeError) and any(
        s in text for s in ("out of memory", "CUDNN_STATUS_NOT_SUPPORTED", "cuDNN error: CUDNN_STATUS_EXECUTION_FAILED",
                            "DefaultCPUAllocator: can't allocate memory")))


def find_executable_batch_size(function: Callable[..., Any] | None = None, starting_batch_size: int = 128,
                               reduce_batch_size_fn: Callable[[], int] | None = None) -> Any:
    """Decorator: call ``function(batch_size, ...)``, and on an out-of-memory error free memory and retry with a
    smaller batch size (×0.9, or what ``reduce_batch_size_fn()`` returns) until it fits or reaches 0.

    >>> tried = []
    >>> @find_executable_batch_size(starting_batch_size=100)
    ... def train(batch_size):
    ...     tried.append(batch_size)
    ...     if batch_size > 80:
    ...         raise RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")
    ...     return batch_size
    >>> train(), tried
    (72, [100, 90, 81, 72])
    """
    if function is None:
        return functools.partial(find_executable_batch_size, starting_batch_size=starting_batch_size,
                                 reduce_batch_size_fn=reduce_batch_size_fn)
    first = next(iter(inspect.signature(function).parameters), None)
    if first != "batch_size":
        raise TypeError(f"find_executable_batch_size: {function.__name__}'s first argument must be `batch_size` "
                        f"(it is {first!r}); ember passes the batch size there.")

    @functools.wraps(function)
    def run(*args: Any, **kwargs: Any) -> Any:
        batch_size = starting_batch_size
        while True:
            if batch_size <= 0:
                raise RuntimeError("find_executable_batch_size: no batch size fits in memory (reached 0).")
            try:
                return function(batch_size, *args, **kwargs)
            except Exception as error:
                if not _is_oom(error):
                    raise
                release_memory()
                batch_size = reduce_batch_size_fn() if reduce_batch_size_fn else int(batch_size * 0.9)

    return run
