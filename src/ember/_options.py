"""Resolving the Accelerator's arguments: launcher settings, validation, device, precision and strategy.

Everything here runs before any process group, model or data work (rule 5 of the design): a bad argument fails
at once, naming the argument and the fix.
"""

from __future__ import annotations

import datetime
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ember import faults
from ember._env import LaunchSettings, ProcessInfo
from ember._errors import EmberConfigError, unknown_value
from ember._handlers import ResolvedHandlers, resolve_handlers
from ember.precision import Precision, resolve_precision
from ember.strategies import Strategy, resolve_strategy
from ember.strategies.base import TrainingSettings

if TYPE_CHECKING:
    from collections.abc import Sequence

DEVICE_TYPES = ("auto", "cpu", "cuda", "gpu")


@dataclass
class Options:
    """The Accelerator's resolved configuration."""

    device: torch.device
    precision: Precision
    strategy: Strategy
    timeout: datetime.timedelta
    accumulation_steps: int
    accumulation_reduction: str
    handlers: ResolvedHandlers
    signals: tuple[Any, ...]
    launch: LaunchSettings


def resolve(
    process: ProcessInfo,
    *,
    mixed_precision: str | Precision | None,
    gradient_accumulation_steps: int | None,
    cpu: bool,
    strategy: str | Strategy | None,
    kwargs_handlers: Sequence[Any] | None,
    timeout: float | datetime.timedelta | None,
    accelerator: str,
    accumulation_reduction: str,
    handle_signals: bool | Sequence[int | str],
    nonfinite: str,
    plugins: Sequence[Any] = (),
    launch: LaunchSettings | None = None,
) -> Options:
    """Check every argument and build the device, precision and strategy (no process group yet)."""
    launch = launch if launch is not None else LaunchSettings.from_env()
    # `ember launch` passes its configuration through the environment; explicit arguments win.
    accumulation_source = "gradient_accumulation_steps"
    if gradient_accumulation_steps is None and launch.gradient_accumulation_steps:
        gradient_accumulation_steps = launch.gradient_accumulation_steps
        accumulation_source = "ember launch --gradient_accumulation_steps"
    from_launcher = strategy in (None, "auto") and bool(launch.strategy) and not any(p is not None for p in plugins)
    if from_launcher:
        strategy = launch.strategy
    if accelerator == "auto" and launch.accelerator:
        accelerator = launch.accelerator
    if mixed_precision is None:
        mixed_precision = launch.mixed_precision
    if gradient_accumulation_steps is not None and (isinstance(gradient_accumulation_steps, bool)
                                                    or not isinstance(gradient_accumulation_steps, int)
                                                    or gradient_accumulation_steps < 1):
        raise EmberConfigError(f"gradient_accumulation_steps={gradient_accumulation_steps!r} must be an integer >= 1.")
    if accumulation_reduction not in ("mean", "sum"):
        raise unknown_value("accumulation_reduction", accumulation_reduction, ["mean", "sum"])
    handlers = resolve_handlers(kwargs_handlers)
    faults.check_nonfinite_mode(nonfinite)
    signals = faults.resolve_signals(handle_signals)
    device = select_device(process, cpu, accelerator)
    precision = resolve_precision(mixed_precision, device.type, handlers.scaler)
    strat = _strategy(strategy, plugins, process, launch)
    if isinstance(strat, TrainingSettings):  # e.g. DeepSpeed's config: agree on the accumulation now
        gradient_accumulation_steps = strat.resolve_accumulation(gradient_accumulation_steps, accumulation_source) \
            or gradient_accumulation_steps
    options = getattr(strat, "options", None)
    if (handlers.ddp or handlers.comm_hook is not None) and options is None and process.world_size > 1 \
            and process.rank == 0:  # one process: nothing to synchronise, the handler is moot (as in Accelerate)
        warnings.warn(f"kwargs_handlers has DistributedDataParallelKwargs, but strategy={strat.name!r} does not use "
                      "DistributedDataParallel: the handler is ignored.", stacklevel=3)
    if options is not None:
        for key, value in handlers.ddp.items():
            setattr(options, key, value)
        if handlers.comm_hook is not None:
            strat.comm_hook = handlers.comm_hook  # type: ignore[attr-defined]
    if process.world_size > 1 and not strat.multiprocess:
        raise EmberConfigError(
            f"strategy={strat.name!r} runs one process, but this job has WORLD_SIZE={process.world_size}: every "
            "process would train its own copy. Use strategy='ddp' (or 'auto'), or launch a single process."
        )
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
        timeout = datetime.timedelta(seconds=timeout)
    resolved_timeout: datetime.timedelta = (timeout if isinstance(timeout, datetime.timedelta) else None) \
        or handlers.timeout or datetime.timedelta(minutes=30)
    return Options(device, precision, strat, resolved_timeout, gradient_accumulation_steps or 1, accumulation_reduction,
                   handlers, signals, launch)


def _strategy(value: str | Strategy | None, plugins: Sequence[Any], process: ProcessInfo,
              launch: LaunchSettings) -> Strategy:
    """The strategy from ``strategy=``, an Accelerate-style plugin (``fsdp_plugin=``/``deepspeed_plugin=``), or the
    launcher (with its YAML section applied)."""
    given = [p for p in plugins if p is not None]
    if len(given) > 1:
        raise EmberConfigError(
            f"got {len(given)} strategy plugins ({', '.join(type(p).__name__ for p in given)}); pass one of them.")
    if given:
        if value not in (None, "auto"):
            raise EmberConfigError(
                f"strategy={value!r} and {type(given[0]).__name__} both choose the strategy; pass one of them.")
        built = given[0].to_strategy()
        if not isinstance(built, Strategy):
            raise EmberConfigError(f"{type(given[0]).__name__}.to_strategy() must return an ember Strategy.")
        return built
    strat = resolve_strategy(value, process.world_size)
    if isinstance(value, str) and value == launch.strategy and launch.strategy_config:
        strat.configure(launch.strategy_config, "ember launch --config_file")
    return strat


def select_device(process: ProcessInfo, cpu: bool, accelerator: str) -> torch.device:
    """CPU when asked or without CUDA; else the GPU of this process's local rank."""
    kind = str(accelerator).lower()
    if kind not in DEVICE_TYPES:
        raise unknown_value("accelerator", accelerator, DEVICE_TYPES)
    if cpu or kind == "cpu":
        return torch.device("cpu")
    has_cuda = torch.cuda.is_available()
    if kind in ("cuda", "gpu") and not has_cuda:
        raise EmberConfigError(
            f"accelerator={accelerator!r} asks for CUDA, but torch.cuda.is_available() is False "
            f"(torch {torch.__version__}). Use accelerator='cpu' (or cpu=True), or install a CUDA build."
        )
    if not has_cuda:
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if process.local_rank >= count:
        raise EmberConfigError(
            f"this node runs {process.local_world_size} processes but has {count} GPU(s): local rank "
            f"{process.local_rank} has no GPU. Use --num_processes <= {count} per machine."
        )
    return torch.device("cuda", process.local_rank)
