"""The Strategy interface: everything that differs between single-device, DDP, FSDP and DeepSpeed.

The Accelerator never branches on the strategy's name; it calls these methods. A new strategy is a new file
with a subclass plus one line in :mod:`ember.strategies.registry`.
"""

from __future__ import annotations

import abc
import contextlib
import datetime
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist

from ember._env import ProcessInfo

ReduceOp = str  # "sum" | "mean" | "max" | "min"


class Strategy(abc.ABC):
    """How models are placed, wrapped, synchronised and saved across processes."""

    name: str = "base"

    def __init__(self) -> None:
        self.process: ProcessInfo = ProcessInfo()
        self.device: torch.device = torch.device("cpu")
        self.timeout: datetime.timedelta = datetime.timedelta(minutes=30)

    def bind(self, process: ProcessInfo, device: torch.device, timeout: datetime.timedelta) -> None:
        """Give the strategy the process facts, its device and the collective timeout (called once)."""
        self.process, self.device, self.timeout = process, device, timeout

    # lifecycle ----------------------------------------------------------------------------------------
    def setup_environment(self) -> None:
        """Start the process group (if any). Called once, before any model or data is touched."""

    def teardown(self) -> None:
        """Release what :meth:`setup_environment` created."""

    # models and optimizers ----------------------------------------------------------------------------
    @abc.abstractmethod
    def setup_module(self, module: torch.nn.Module) -> torch.nn.Module:
        """Move ``module`` to the device and wrap it for this strategy; return what the user trains."""

    def setup_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        return optimizer

    def unwrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """The user's original module inside any wrapper."""
        inner = getattr(module, "module", None)
        return inner if isinstance(inner, torch.nn.Module) and module is not inner else module

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()  # type: ignore[no-untyped-call,unused-ignore]

    def no_backward_sync(self, module: torch.nn.Module) -> contextlib.AbstractContextManager[Any]:
        """Skip the gradient all-reduce for backward passes inside this context (accumulation)."""
        return contextlib.nullcontext()

    def clip_grad_norm_(
        self, parameters: Iterable[torch.nn.Parameter], max_norm: float, norm_type: float = 2.0
    ) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(list(parameters), max_norm, norm_type=norm_type, foreach=True)

    def clip_grad_value_(self, parameters: Iterable[torch.nn.Parameter], clip_value: float) -> None:
        torch.nn.utils.clip_grad_value_(list(parameters), clip_value, foreach=True)

    # state ----------------------------------------------------------------------------------------------
    def model_state_dict(self, module: torch.nn.Module) -> dict[str, torch.Tensor]:
        """A full (unsharded) state dict of ``module`` on every rank that needs to write it."""
        return self.unwrap(module).state_dict()

    def load_model_state_dict(self, module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
        self.unwrap(module).load_state_dict(state)

    def optimizer_state_dict(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return optimizer.state_dict()

    def load_optimizer_state_dict(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        optimizer.load_state_dict(state)

    # collectives (no-ops on one process) ------------------------------------------------------------------
    @property
    def is_distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

    def barrier(self) -> None:
        if self.is_distributed:
            dist.barrier()

    def all_reduce(self, tensor: torch.Tensor, op: ReduceOp = "sum") -> torch.Tensor:
        if not self.is_distributed:
            return tensor
        ops = {"sum": dist.ReduceOp.SUM, "mean": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
        out = tensor.clone()
        dist.all_reduce(out, op=ops[op])
        if op == "mean":
            out = out / dist.get_world_size() if out.is_floating_point() else out // dist.get_world_size()
        return out

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate ``tensor`` from every rank along dim 0 (scalars become a 1-D tensor)."""
        if tensor.dim() == 0:
            tensor = tensor.reshape(1)
        if not self.is_distributed:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        if self.is_distributed:
            dist.broadcast(tensor, src=src)
        return tensor

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        if not self.is_distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(device={self.device})"


class SingleDeviceStrategy(Strategy):
    """One process, one device."""

    name = "single"
    #: read by the Accelerator: a job with WORLD_SIZE > 1 must not silently train N unsynchronised copies
    supports_multiprocess = False

    def setup_module(self, module: torch.nn.Module) -> torch.nn.Module:
        return module.to(self.device)
