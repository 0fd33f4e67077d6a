"""Parse what ``configure_optimizers`` returns into optimizers and scheduler configurations.

Accepted (as Lightning): an optimizer; a list/tuple of optimizers; ``([optimizers], [schedulers])`` where a
scheduler may also be a config dict; a dict ``{"optimizer": opt, "lr_scheduler": sched | config,
"monitor": name}``; a list/tuple of such dicts. A scheduler config is ``{"scheduler": sched,
"interval": "epoch" | "step", "frequency": 1, "monitor": "val_loss", "strict": True, "name": None}``.
The default interval is ``"epoch"`` (Lightning's default); ``frequency`` counts epochs or optimizer steps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ember._errors import EmberConfigError, did_you_mean, unknown_value

_CONFIG_KEYS = ("scheduler", "interval", "frequency", "monitor", "strict", "name", "reduce_on_plateau")
_OPT_DICT_KEYS = ("optimizer", "lr_scheduler", "monitor")


@dataclass
class LRSchedulerConfig:
    """One scheduler and when the Trainer steps it (``trainer.lr_scheduler_configs``)."""

    scheduler: Any
    name: str | None = None
    interval: str = "epoch"
    frequency: int = 1
    reduce_on_plateau: bool = False
    monitor: str | None = None
    strict: bool = True


def _is_plateau(scheduler: Any) -> bool:
    inner = getattr(scheduler, "scheduler", scheduler)
    return isinstance(inner, torch.optim.lr_scheduler.ReduceLROnPlateau)


def _scheduler_config(value: Any, monitor: str | None) -> LRSchedulerConfig:
    if isinstance(value, Mapping):
        unknown = [k for k in value if k not in _CONFIG_KEYS]
        if unknown:
            raise EmberConfigError(
                f"lr_scheduler config has unknown key {unknown[0]!r}.{did_you_mean(unknown[0], _CONFIG_KEYS)} "
                f"Valid keys: {', '.join(_CONFIG_KEYS)}."
            )
        if "scheduler" not in value:
            raise EmberConfigError('an lr_scheduler config dict needs a "scheduler" key holding the scheduler.')
        interval = str(value.get("interval", "epoch"))
        if interval not in ("epoch", "step"):
            raise unknown_value("lr_scheduler interval", interval, ["epoch", "step"])
        frequency = value.get("frequency", 1)
        if not isinstance(frequency, int) or frequency < 1:
            raise EmberConfigError(f"lr_scheduler frequency={frequency!r} must be an integer >= 1.")
        config = LRSchedulerConfig(
            scheduler=value["scheduler"], name=value.get("name"), interval=interval, frequency=frequency,
            monitor=value.get("monitor", monitor), strict=bool(value.get("strict", True)),
        )
    else:
        config = LRSchedulerConfig(scheduler=value, monitor=monitor)
    config.reduce_on_plateau = bool(
        value.get("reduce_on_plateau", _is_plateau(config.scheduler)) if isinstance(value, Mapping)
        else _is_plateau(config.scheduler)
    )
    if config.reduce_on_plateau and config.monitor is None:
        raise EmberConfigError(
            "ReduceLROnPlateau needs a metric: return {'optimizer': opt, 'lr_scheduler': {'scheduler': sched, "
            "'monitor': 'val_loss'}} from configure_optimizers."
        )
    if not hasattr(config.scheduler, "step"):
        raise EmberConfigError(f"lr scheduler {type(config.scheduler).__name__} has no step() method.")
    return config


def _from_dict(value: Mapping[str, Any]) -> tuple[Any, list[LRSchedulerConfig]]:
    unknown = [k for k in value if k not in _OPT_DICT_KEYS]
    if unknown:
        raise EmberConfigError(
            f"configure_optimizers returned a dict with unknown key {unknown[0]!r}."
            f"{did_you_mean(unknown[0], _OPT_DICT_KEYS)} Valid keys: {', '.join(_OPT_DICT_KEYS)}."
        )
    if "optimizer" not in value:
        raise EmberConfigError('a dict returned by configure_optimizers needs an "optimizer" key.')
    scheds = [] if value.get("lr_scheduler") is None else [_scheduler_config(value["lr_scheduler"], value.get("monitor"))]
    return value["optimizer"], scheds


def parse_optimizers(result: Any) -> tuple[list[torch.optim.Optimizer], list[LRSchedulerConfig]]:
    """Optimizers and scheduler configs from any form ``configure_optimizers`` may return."""
    optimizers: list[Any]
    configs: list[LRSchedulerConfig] = []
    if isinstance(result, torch.optim.Optimizer):
        optimizers = [result]
    elif isinstance(result, Mapping):
        opt, configs = _from_dict(result)
        optimizers = [opt]
    elif (
        isinstance(result, (list, tuple)) and len(result) == 2 and isinstance(result[0], (list, tuple))
        and isinstance(result[1], (list, tuple))
    ):
        optimizers = list(result[0])
        configs = [_scheduler_config(s, None) for s in result[1]]
    elif isinstance(result, (list, tuple)) and result and all(isinstance(r, Mapping) for r in result):
        optimizers = []
        for item in result:
            opt, scheds = _from_dict(item)
            optimizers.append(opt)
            configs.extend(scheds)
    elif isinstance(result, (list, tuple)) and result and all(isinstance(r, torch.optim.Optimizer) for r in result):
        optimizers = list(result)
    else:
        raise EmberConfigError(
            f"configure_optimizers returned {type(result).__name__}: {result!r:.80}. Return an optimizer, a list "
            "of optimizers, ([optimizers], [schedulers]), {'optimizer': opt, 'lr_scheduler': sched} or a list "
            "of such dicts."
        )
    bad = [type(o).__name__ for o in optimizers if not isinstance(o, torch.optim.Optimizer)]
    if bad or not optimizers:
        raise EmberConfigError(f"configure_optimizers must return torch.optim.Optimizer objects; got {bad or 'none'}.")
    _check_scheduler_owners(optimizers, configs)
    return optimizers, configs


def _check_scheduler_owners(optimizers: Sequence[torch.optim.Optimizer], configs: Sequence[LRSchedulerConfig]) -> None:
    for config in configs:
        owner = getattr(config.scheduler, "optimizer", None)
        if owner is not None and not any(owner is opt for opt in optimizers):
            raise EmberConfigError(
                f"the scheduler {type(config.scheduler).__name__} was built on an optimizer that "
                "configure_optimizers did not return. Build it on one of the returned optimizers."
            )


class ModuleOptimizer:
    """What ``self.optimizers()`` returns under manual optimisation: the prepared optimizer, with the hooks.

    ``step()`` runs ``on_before_optimizer_step`` (gradients already unscaled) and steps through the
    Accelerator; ``zero_grad()`` runs ``on_before_zero_grad``. Everything else is the optimizer's.
    """

    def __init__(self, trainer: Any, optimizer: Any) -> None:
        self._trainer = trainer
        self.optimizer = optimizer

    def step(self, closure: Any = None, **kwargs: Any) -> Any:
        result = closure() if closure is not None else None
        self._trainer.accelerator.unscale_gradients(self.optimizer)
        self._trainer._hooks.call("on_before_optimizer_step", self.optimizer)
        self.optimizer.step(**kwargs)
        return result

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._trainer._hooks.call("on_before_zero_grad", self.optimizer)
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def __getattr__(self, name: str) -> Any:
        if name in ("optimizer", "_trainer"):
            raise AttributeError(name)
        return getattr(self.optimizer, name)

    def __repr__(self) -> str:
        return f"ModuleOptimizer({self.optimizer!r})"
