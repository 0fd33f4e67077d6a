"""DistributedDataParallel over a torch.distributed process group (NCCL on GPUs, gloo on CPUs)."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from ember._errors import EmberConfigError
from ember.strategies._group import close_at_exit, destroy_process_group, init_process_group, track_ddp
from ember.strategies.base import (
    BackwardSyncControl,
    ForwardRedirection,
    Reshardable,
    Strategy,
    peel_compiled,
)


@dataclass
class DDPOptions:
    """Options forwarded to ``torch.nn.parallel.DistributedDataParallel``."""

    find_unused_parameters: bool = False
    static_graph: bool = False
    gradient_as_bucket_view: bool = True
    bucket_cap_mb: float | None = None
    broadcast_buffers: bool | None = None


class DDPStrategy(Strategy, BackwardSyncControl, ForwardRedirection, Reshardable):
    """One process per device; gradients are averaged with an all-reduce during backward.

    >>> DDPStrategy(find_unused_parameters=True).options.find_unused_parameters
    True
    """

    name = "ddp"

    def __init__(self, backend: str | None = None, **options: Any) -> None:
        super().__init__()
        valid = set(DDPOptions.__dataclass_fields__)
        unknown = set(options) - valid
        if unknown:
            raise EmberConfigError(
                f"DDPStrategy got unknown option(s) {sorted(unknown)}. Valid options: {sorted(valid)}."
            )
        self.backend = backend
        self.options = DDPOptions(**options)
        #: builds a DDP communication hook ``(state, hook)`` for every wrapped module (see DistributedDataParallelKwargs)
        self.comm_hook: Callable[[], tuple[Any, Any]] | None = None
        self._owns_group = False
        self._wrapped: list[weakref.ref[DistributedDataParallel]] = []

    def setup_environment(self) -> None:
        self._owns_group = init_process_group(self.process, self.device, self.timeout, self.backend, self.name)
        if self._owns_group:  # a script that ends without end_training() still releases reducers before the group
            close_at_exit(self, DDPStrategy.teardown)

    def describe(self) -> str:
        return f"model wrapped in DistributedDataParallel on {self.device}"

    def teardown(self) -> None:
        # Release the DDP reducers first: a reducer that outlives its gloo process group can abort the
        # interpreter at exit ("terminate called without an active exception").
        for ref in self._wrapped:
            ddp = ref()
            if ddp is not None:
                ddp.__dict__.pop("reducer", None)
                ddp.__dict__.pop("logger", None)
        self._wrapped.clear()
        if self._owns_group:
            destroy_process_group()
            self._owns_group = False

    def setup_module(self, module: torch.nn.Module) -> torch.nn.Module:
        if not any(p.requires_grad for p in module.parameters()):
            return module
        kwargs = {k: v for k, v in asdict(self.options).items() if v is not None}
        on_gpu = any(p.is_cuda for p in module.parameters())
        device_ids = [self.device.index] if self.device.type == "cuda" and on_gpu else None
        wrapped = DistributedDataParallel(module, device_ids=device_ids, **kwargs)
        if self.comm_hook is not None:
            wrapped.register_comm_hook(*self.comm_hook())
        self._wrapped.append(weakref.ref(wrapped))
        track_ddp(wrapped)
        return wrapped

    def unwrap(self, module: torch.nn.Module) -> torch.nn.Module:
        module = peel_compiled(module)
        return peel_compiled(module.module) if isinstance(module, DistributedDataParallel) else module

    def no_backward_sync(self, module: torch.nn.Module) -> contextlib.AbstractContextManager[Any]:
        module = peel_compiled(module)
        if isinstance(module, DistributedDataParallel):
            return module.no_sync()
        return contextlib.nullcontext()
