"""Accelerate-style ``kwargs_handlers``: small dataclasses that carry options to the right component."""

from __future__ import annotations

import datetime
import enum
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ember._errors import EmberConfigError, unknown_value


class DDPCommunicationHookType(str, enum.Enum):
    """Gradient communication hooks for DDP (Accelerate's names): compress or low-rank-approximate the all-reduce.

    >>> DDPCommunicationHookType.FP16 == "fp16"
    True
    """

    NO = "no"
    FP16 = "fp16"
    BF16 = "bf16"
    POWER_SGD = "power_sgd"
    BATCHED_POWER_SGD = "batched_power_sgd"


@dataclass
class DistributedDataParallelKwargs:
    """Options for ``torch.nn.parallel.DistributedDataParallel``.

    >>> from ember import Accelerator, DistributedDataParallelKwargs
    >>> acc = Accelerator(kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    """

    find_unused_parameters: bool = False
    static_graph: bool = False
    gradient_as_bucket_view: bool = True
    bucket_cap_mb: float | None = None
    broadcast_buffers: bool | None = None
    #: a communication hook (``DDPCommunicationHookType``), optionally wrapped to compress to fp16/bf16
    comm_hook: DDPCommunicationHookType | str = DDPCommunicationHookType.NO
    comm_wrapper: DDPCommunicationHookType | str = DDPCommunicationHookType.NO
    comm_state_option: dict[str, Any] = field(default_factory=dict)


@dataclass
class InitProcessGroupKwargs:
    """Options for ``torch.distributed.init_process_group`` (the collective timeout)."""

    timeout: datetime.timedelta | None = None


@dataclass
class GradScalerKwargs:
    """Options for ``torch.amp.GradScaler`` under fp16."""

    init_scale: float = 65536.0
    growth_factor: float = 2.0
    backoff_factor: float = 0.5
    growth_interval: int = 2000
    enabled: bool = True


@dataclass
class ResolvedHandlers:
    ddp: dict[str, Any] = field(default_factory=dict)
    timeout: datetime.timedelta | None = None
    scaler: dict[str, Any] | None = None
    #: builds ``(state, hook)`` for ``DistributedDataParallel.register_comm_hook`` (called after the group exists)
    comm_hook: Callable[[], tuple[Any, Any]] | None = None
    #: ``ProfileKwargs``: the default options of ``accelerator.profile()``
    profile: Any = None


def comm_hook_factory(
    hook: DDPCommunicationHookType | str, wrapper: DDPCommunicationHookType | str, options: dict[str, Any]
) -> Callable[[], tuple[Any, Any]] | None:
    """``(state, hook)`` for DDP from Accelerate-style names; None for ``"no"``."""
    names = [m.value for m in DDPCommunicationHookType]
    hook_name = DDPCommunicationHookType(hook).value if hook in names else str(hook)
    wrap_name = DDPCommunicationHookType(wrapper).value if wrapper in names else str(wrapper)
    if hook_name not in names:
        raise unknown_value("DistributedDataParallelKwargs(comm_hook)", hook, names)
    if wrap_name not in ("no", "fp16", "bf16"):
        raise unknown_value("DistributedDataParallelKwargs(comm_wrapper)", wrapper, ["no", "fp16", "bf16"])
    if hook_name == "no":
        if wrap_name != "no":
            raise EmberConfigError("DistributedDataParallelKwargs(comm_wrapper=...) wraps a comm_hook; set comm_hook too.")
        return None

    def build() -> tuple[Any, Any]:
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook

        state: Any = None
        if hook_name in ("power_sgd", "batched_power_sgd"):
            state = powerSGD_hook.PowerSGDState(process_group=None, **options)
        fn = {
            "fp16": default_hooks.fp16_compress_hook, "bf16": default_hooks.bf16_compress_hook,
            "power_sgd": powerSGD_hook.powerSGD_hook, "batched_power_sgd": powerSGD_hook.batched_powerSGD_hook,
        }[hook_name]
        if wrap_name != "no":
            fn = {"fp16": default_hooks.fp16_compress_wrapper,  # type: ignore[assignment]
                  "bf16": default_hooks.bf16_compress_wrapper}[wrap_name](fn)  # type: ignore[arg-type]
        return state, fn

    return build


def resolve_handlers(handlers: Sequence[Any] | None) -> ResolvedHandlers:
    from ember.utils import ProfileKwargs

    out = ResolvedHandlers()
    for handler in handlers or ():
        if isinstance(handler, DistributedDataParallelKwargs):
            out.ddp = asdict(handler)
            hook, wrapper, options = (out.ddp.pop(k) for k in ("comm_hook", "comm_wrapper", "comm_state_option"))
            out.comm_hook = comm_hook_factory(hook, wrapper, options)
        elif isinstance(handler, InitProcessGroupKwargs):
            out.timeout = handler.timeout
        elif isinstance(handler, GradScalerKwargs):
            out.scaler = asdict(handler)
        elif isinstance(handler, ProfileKwargs):
            out.profile = handler
        else:
            raise EmberConfigError(
                f"kwargs_handlers got {type(handler).__name__}; expected DistributedDataParallelKwargs, "
                "InitProcessGroupKwargs, GradScalerKwargs or ProfileKwargs from ember.utils."
            )
    return out
