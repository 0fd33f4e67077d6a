"""A test-only strategy, written as a user would: one new file and one registration line, no edit to ember.

Parameters are replicated; after each backward (outside ``no_backward_sync``) every gradient is averaged with its
own all-reduce — DDP without DDP's wrapper or buckets. Tests train it through both layers and compare with DDP.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

from ember.strategies import BackwardSyncControl, Reshardable, Strategy, register_strategy
from ember.strategies._group import destroy_process_group, init_process_group


class AllReduceStrategy(Strategy, BackwardSyncControl, Reshardable):
    name = "allreduce_test"

    def __init__(self) -> None:
        super().__init__()
        self._sync = True
        self._modules: list[torch.nn.Module] = []
        self.backward_calls = 0

    def setup_environment(self) -> None:
        self._owns = init_process_group(self.process, self.device, self.timeout, None, self.name)

    def teardown(self) -> None:
        if self._owns:
            destroy_process_group()
            self._owns = False

    def setup_module(self, module: torch.nn.Module) -> torch.nn.Module:
        if self.is_distributed:  # every rank starts from rank 0's weights
            for tensor in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(tensor.data, src=0)
        self._modules.append(module)
        return module

    def backward(self, loss: torch.Tensor, module: torch.nn.Module | None = None, **kwargs: Any) -> None:
        self.backward_calls += 1
        loss.backward(**kwargs)
        if not self._sync or not self.is_distributed:
            return
        for m in self._modules:
            for p in m.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= dist.get_world_size()

    @contextlib.contextmanager
    def _unsynced(self) -> Iterator[None]:
        self._sync = False
        try:
            yield
        finally:
            self._sync = True

    def no_backward_sync(self, module: torch.nn.Module) -> contextlib.AbstractContextManager[Any]:
        return self._unsynced()


register_strategy("allreduce_test", AllReduceStrategy)
