"""Accelerate-style ``kwargs_handlers``: small dataclasses that carry options to the right component."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ember._errors import EmberConfigError


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


def resolve_handlers(handlers: Sequence[Any] | None) -> ResolvedHandlers:
    out = ResolvedHandlers()
    for handler in handlers or ():
        if isinstance(handler, DistributedDataParallelKwargs):
            out.ddp = asdict(handler)
        elif isinstance(handler, InitProcessGroupKwargs):
            out.timeout = handler.timeout
        elif isinstance(handler, GradScalerKwargs):
            out.scaler = asdict(handler)
        else:
            raise EmberConfigError(
                f"kwargs_handlers got {type(handler).__name__}; expected DistributedDataParallelKwargs, "
                "InitProcessGroupKwargs or GradScalerKwargs from ember."
            )
    return out
