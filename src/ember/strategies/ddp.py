"""DistributedDataParallel over a torch.distributed process group (NCCL on GPUs, gloo on CPUs)."""

from __future__ import annotations

import contextlib
import os
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
        )
        self._owns_group = True

    def teardown(self) -> None:
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self._owns_group = False

    def setup_module(self, module: torch.nn.Module) -> torch.nn.Module:
        module = module.to(self.device)
        if not any(p.requires_grad for p in module.parameters()):
            return module
        kwargs = {k: v for k, v in asdict(self.options).items() if v is not None}
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids, **kwargs)

    def unwrap(self, module: torch.nn.Module) -> torch.nn.Module:
        return module.module if isinstance(module, DistributedDataParallel) else module

    def no_backward_sync(self, module: torch.nn.Module) -> contextlib.AbstractContextManager[Any]:
        if isinstance(module, DistributedDataParallel):
            return module.no_sync()
        return contextlib.nullcontext()
