"""DistributedDataParallel over a torch.distributed process group (NCCL on GPUs, gloo on CPUs)."""

from __future__ import annotations

import atexit
import contextlib
import os
import weakref
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ember._errors import EmberConfigError
from ember.strategies.base import Strategy


@dataclass
class DDPOptions:
    """Options forwarded to ``torch.nn.parallel.DistributedDataParallel``."""

    find_unused_parameters: bool = False
    static_graph: bool = False
    gradient_as_bucket_view: bool = True
    bucket_cap_mb: float | None = None
    broadcast_buffers: bool | None = None


def _restart_store(world_size: int, timeout: Any) -> Any:
    """After an elastic restart (``ember launch --max_restarts``), a store whose keys belong to this attempt.

    torch's agent keeps one store for the whole job; the new workers would otherwise find the previous attempt's
    gloo/NCCL addresses in it and connect to a dead peer. None (the usual ``env://`` setup) on a first attempt.
    """
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    if attempt == 0 or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    store = dist.TCPStore(  # type: ignore[attr-defined,unused-ignore]
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size, is_master=False, timeout=timeout
    )
    return dist.PrefixStore(f"ember/restart-{attempt}", store)  # type: ignore[attr-defined,unused-ignore]


class DDPStrategy(Strategy):
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
        self._owns_group = False
        self._wrapped: list[weakref.ref[DistributedDataParallel]] = []

    def setup_environment(self) -> None:
        if dist.is_initialized():
            return
        backend = self.backend or ("nccl" if self.device.type == "cuda" else "gloo")
        if self.process.world_size > 1 and "MASTER_ADDR" not in os.environ:
            raise EmberConfigError(
                "strategy='ddp' with world size > 1 needs MASTER_ADDR and MASTER_PORT in the environment. "
                "Start the script with `ember launch` or `torchrun`, which set them."
            )
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        dist.init_process_group(
            backend=backend,
            rank=self.process.rank,
            world_size=self.process.world_size,
            timeout=self.timeout,
            device_id=self.device if self.device.type == "cuda" else None,
            store=_restart_store(self.process.world_size, self.timeout),
        )
        self._owns_group = True
        # If the script ends without end_training(), still release reducers before the group at exit.
        atexit.register(_teardown_at_exit, weakref.ref(self))

    def teardown(self) -> None:
        # Release the DDP reducers first: a reducer that outlives its gloo process group can abort the
        # interpreter at exit ("terminate called without an active exception").
        for ref in self._wrapped:
            ddp = ref()
            if ddp is not None:
                ddp.__dict__.pop("reducer", None)
                ddp.__dict__.pop("logger", None)
        self._wrapped.clear()
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self._owns_group = False

    def setup_module(self, module: torch.nn.Module) -> torch.nn.Module:
        module = module.to(self.device)
        if not any(p.requires_grad for p in module.parameters()):
            return module
        kwargs = {k: v for k, v in asdict(self.options).items() if v is not None}
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        wrapped = DistributedDataParallel(module, device_ids=device_ids, **kwargs)
        self._wrapped.append(weakref.ref(wrapped))
        return wrapped

    def unwrap(self, module: torch.nn.Module) -> torch.nn.Module:
        return module.module if isinstance(module, DistributedDataParallel) else module

    def no_backward_sync(self, module: torch.nn.Module) -> contextlib.AbstractContextManager[Any]:
        if isinstance(module, DistributedDataParallel):
            return module.no_sync()
        return contextlib.nullcontext()


def _teardown_at_exit(ref: weakref.ref[DDPStrategy]) -> None:
    strategy = ref()
    if strategy is not None:
        strategy.teardown()
