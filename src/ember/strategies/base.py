"""The Strategy interface: everything that differs between single-device, DDP, FSDP and DeepSpeed.

The Accelerator never branches on a strategy's name; it calls these methods. A strategy owns the step, as
Lightning Fabric's does: joint :meth:`Strategy.setup` of a module and its optimizers, :meth:`~Strategy.backward`,
:meth:`~Strategy.optimizer_step`, gradient clipping (correct on sharded gradients), state dicts that receive the
module, checkpoint save/load that may write per-rank files, and the collectives. Precision is negotiated with it
(:meth:`~Strategy.negotiate_precision`). Optional capabilities are small separate interfaces
(:class:`BackwardSyncControl`, :class:`Reshardable`, :class:`ForwardRedirection`, :class:`TrainingSettings`,
:class:`GradientHolder`), never boolean flags.

A new strategy is a new file with a subclass plus one :func:`ember.strategies.register_strategy` line.
"""

from __future__ import annotations

import abc
import contextlib
import datetime
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from ember._env import ProcessInfo
from ember.strategies.topology import Topology

if TYPE_CHECKING:
    from ember.precision import Precision

ReduceOp = str  # "sum" | "mean" | "max" | "min"
_OPS = {"sum": "SUM", "mean": "SUM", "max": "MAX", "min": "MIN"}


class Strategy(abc.ABC):
    """How models are placed, wrapped, stepped, synchronised and saved across processes."""

    name: str = "base"
    #: False: this strategy runs one process; a job with WORLD_SIZE > 1 must not train N unsynchronised copies
    multiprocess: bool = True

    def __init__(self) -> None:
        self.process: ProcessInfo = ProcessInfo()
        self.device: torch.device = torch.device("cpu")
        self.timeout: datetime.timedelta = datetime.timedelta(minutes=30)
        self.topology: Topology = Topology()

    def bind(self, process: ProcessInfo, device: torch.device, timeout: datetime.timedelta) -> None:
        """Give the strategy the process facts, its device and the collective timeout (called once)."""
        self.process, self.device, self.timeout = process, device, timeout
        self.topology = self.build_topology(process)

    def configure(self, settings: Mapping[str, Any], source: str = "the launch config") -> None:
        """Apply the launcher's section for this strategy (e.g. the YAML's ``fsdp_config``). A strategy without
        settings refuses any, naming them."""
        if settings:
            from ember._errors import EmberConfigError

            raise EmberConfigError(
                f"{source} gives settings {sorted(settings)} for strategy={self.name!r}, which takes none. Remove "
                "them, or choose the strategy they belong to."
            )

    def build_topology(self, process: ProcessInfo) -> Topology:
        """The mesh sizes (default: every rank a data-parallel replica)."""
        return Topology.build(process.world_size, process.rank)

    # lifecycle ----------------------------------------------------------------------------------------
    def setup_environment(self) -> None:
        """Start the process group (if any). Called once, before any model or data is touched."""

    def teardown(self) -> None:
        """Release what :meth:`setup_environment` created."""

    def negotiate_precision(self, precision: Precision) -> Precision:
        """The precision plugin to use with this strategy (a sharded strategy may bring its own)."""
        return precision

    def distributed_type(self) -> str:
        """Accelerate's ``DistributedType`` value for this strategy (``accelerator.distributed_type``)."""
        if not self.multiprocess or self.process.world_size == 1:
            return "NO"
        return "MULTI_GPU" if self.device.type == "cuda" else "MULTI_CPU"

    def describe(self) -> str:
        """What this strategy did to a prepared model, for the "what ember changed" notice."""
        return f"model prepared by strategy {self.name!r} on {self.device}"

    # models and optimizers ----------------------------------------------------------------------------
    def module_init_context(self, empty_init: bool | None = None) -> contextlib.AbstractContextManager[Any]:
        """Where modules built inside it are created: on the device (default), or on ``meta`` with
        ``empty_init=True`` where the strategy can materialise them after wrapping."""
        return torch.device(self.device)

    def module_to_device(self, module: torch.nn.Module) -> torch.nn.Module:
        """Move ``module`` to this strategy's device (``prepare`` skips it for ``device_placement=False``)."""
        return module.to(self.device)

    def setup(
        self, module: torch.nn.Module, optimizers: Sequence[torch.optim.Optimizer]
    ) -> tuple[torch.nn.Module, list[torch.optim.Optimizer]]:
        """Wrap ``module`` and its ``optimizers`` together (DeepSpeed needs both; FSDP rebinds parameters)."""
        wrapped = self.setup_module(module)
        return wrapped, [self.setup_optimizer(opt) for opt in optimizers]

    @abc.abstractmethod
    def setup_module(self, module: torch.nn.Module) -> torch.nn.Module:
        """Wrap ``module`` (already on its device) for this strategy; return what the user trains."""

    def setup_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """An optimizer prepared on its own (after its module): rebind or wrap it if the strategy must."""
        return optimizer

    def unwrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """The user's original module inside any wrapper (``torch.compile``'s included)."""
        module = peel_compiled(module)
        inner = getattr(module, "module", None)
        return inner if isinstance(inner, torch.nn.Module) and module is not inner else module

    def eval_context(self, inference: bool = True) -> contextlib.AbstractContextManager[Any]:
        """Evaluation without gradients: ``torch.inference_mode`` (``inference=True``) or ``torch.no_grad``."""
        return torch.inference_mode() if inference else torch.no_grad()

    # the step -----------------------------------------------------------------------------------------------
    def backward(self, loss: torch.Tensor, module: torch.nn.Module | None = None, **kwargs: Any) -> None:
        """Back-propagate an already scaled ``loss`` (``kwargs`` as ``Tensor.backward``)."""
        loss.backward(**kwargs)  # type: ignore[no-untyped-call,unused-ignore]

    def optimizer_step(self, optimizer: torch.optim.Optimizer, precision: Precision, **kwargs: Any) -> Any:
        """Step ``optimizer``; returns whether it was skipped (a bool, or a 0-d bool tensor read lazily)."""
        return precision.optimizer_step(optimizer, **kwargs)

    def clip_grad_norm_(
        self, module: torch.nn.Module | None, parameters: Iterable[torch.nn.Parameter], max_norm: float,
        norm_type: float = 2.0,
    ) -> torch.Tensor:
        """Clip the total gradient norm of ``parameters`` over all ranks' shards; return the norm before."""
        return torch.nn.utils.clip_grad_norm_(list(parameters), max_norm, norm_type=norm_type, foreach=True)

    def clip_grad_value_(
        self, module: torch.nn.Module | None, parameters: Iterable[torch.nn.Parameter], clip_value: float
    ) -> None:
        torch.nn.utils.clip_grad_value_(list(parameters), clip_value, foreach=True)

    # state ----------------------------------------------------------------------------------------------
    def model_state_dict(self, module: torch.nn.Module) -> dict[str, torch.Tensor]:
        """A full (unsharded) state dict of ``module``; a collective for sharded strategies (call on every rank).

        Only rank 0 needs the result of a sharded strategy: other ranks may get an empty dict."""
        return self.unwrap(module).state_dict()

    def load_model_state_dict(self, module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
        self.unwrap(module).load_state_dict(state)

    def optimizer_state_dict(self, module: torch.nn.Module | None, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return optimizer.state_dict()

    def load_optimizer_state_dict(
        self, module: torch.nn.Module | None, optimizer: torch.optim.Optimizer, state: dict[str, Any]
    ) -> None:
        optimizer.load_state_dict(state)

    def save_checkpoint(self, tmp: Path, models: Sequence[tuple[str, torch.nn.Module]],
                        optimizers: Sequence[tuple[str, torch.nn.Module | None, torch.optim.Optimizer]]) -> None:
        """Write model and optimizer state into ``tmp`` (called on every rank).

        Default: full states, written by rank 0 as ``<name>.safetensors`` and ``<name>.json`` + tensors."""
        from ember import checkpoint as ckpt

        model_states = [(name, self.model_state_dict(m)) for name, m in models]
        optim_states = [(name, self.optimizer_state_dict(m, o)) for name, m, o in optimizers]
        if self.process.rank == 0:
            for name, state in model_states:
                ckpt.write_tensors(tmp, f"{name}.safetensors", dict(state))
            for name, state in optim_states:
                ckpt.save_state(tmp, name, state)

    def load_checkpoint(self, path: Path, models: Sequence[tuple[str, torch.nn.Module]],
                        optimizers: Sequence[tuple[str, torch.nn.Module | None, torch.optim.Optimizer]]) -> None:
        """Restore what :meth:`save_checkpoint` wrote (called on every rank)."""
        from ember import checkpoint as ckpt

        for name, model in models:
            self.load_model_state_dict(model, ckpt.read_tensors(path, f"{name}.safetensors"))
        for name, owner, optimizer in optimizers:
            self.load_optimizer_state_dict(owner, optimizer, ckpt.load_state(path, name))

    # collectives (no-ops on one process) ------------------------------------------------------------------
    @property
    def is_distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

    def dp_group(self) -> Any:
        """The data-parallel process group (None: the default group)."""
        return self.topology.dp_group(self.device.type) if self.is_distributed else None

    def barrier(self) -> None:
        if self.is_distributed:
            dist.barrier()

    def all_reduce(self, tensor: torch.Tensor, op: ReduceOp = "sum", group: Any = None) -> torch.Tensor:
        if not self.is_distributed:
            return tensor
        out = tensor.clone()
        dist.all_reduce(out, op=getattr(dist.ReduceOp, _OPS[op]), group=group)
        if op == "mean":
            size = dist.get_world_size(group)
            out = out / size if out.is_floating_point() else out // size
        return out

    def all_gather(self, tensor: torch.Tensor, group: Any = None) -> torch.Tensor:
        """Concatenate ``tensor`` from every rank along dim 0 (scalars become a 1-D tensor)."""
        if tensor.dim() == 0:
            tensor = tensor.reshape(1)
        if not self.is_distributed:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, tensor.contiguous(), group=group)
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

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        """True if every rank (``all=True``) or any rank decided True."""
        if not self.is_distributed:
            return decision
        flag = torch.tensor(int(bool(decision)), device=self.device)
        total = int(self.all_reduce(flag, "sum").item())
        return total == dist.get_world_size() if all else total > 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(device={self.device})"


def peel_compiled(module: torch.nn.Module) -> torch.nn.Module:
    """The module inside ``torch.compile``'s wrapper (unchanged if not compiled)."""
    while isinstance(getattr(module, "_orig_mod", None), torch.nn.Module):
        module = module._orig_mod  # type: ignore[assignment]
    return module


# ------------------------------------------------------------------------------------------------------
# optional capabilities: small interfaces a strategy implements (checked with isinstance), never flags
# ------------------------------------------------------------------------------------------------------
class BackwardSyncControl(abc.ABC):
    """The strategy can skip gradient synchronisation for backward passes (accumulation without all-reduce)."""

    @abc.abstractmethod
    def no_backward_sync(self, module: torch.nn.Module) -> contextlib.AbstractContextManager[Any]:
        """Inside the context, backward passes through ``module`` accumulate locally and do not communicate."""


class Reshardable(abc.ABC):  # noqa: B024 - a capability marker: implementing it is the promise
    """Checkpoints of this strategy load on a different world size (model and optimizer are resharded)."""


class ForwardRedirection(abc.ABC):  # noqa: B024 - a capability marker: implementing it is the promise
    """The wrapper's forward must run for every training computation (DDP's reducer, FSDP's unshard hooks,
    DeepSpeed's engine): the Trainer runs ``training_step`` *as* the wrapper's forward."""


class TrainingSettings(abc.ABC):
    """The strategy's own configuration also speaks about settings ember owns (DeepSpeed's config holds the
    accumulation steps and the micro-batch size): ember agrees on them with the strategy before training, so
    that ``"auto"`` values are filled in and contradictions fail early, naming both sides."""

    @abc.abstractmethod
    def resolve_accumulation(self, requested: int | None, source: str) -> int | None:
        """The accumulation steps to train with, given the user's (``requested``, None if not given, named by
        ``source``); None leaves ember's default. Raises when the strategy's configuration contradicts it."""

    @abc.abstractmethod
    def set_micro_batch_size(self, size: int) -> None:
        """The per-process batch size of a prepared training dataloader."""


class GradientHolder(abc.ABC):
    """Gradients live inside the strategy (DeepSpeed's ZeRO partitions), not on the optimizer's parameters:
    ember's accumulation rescale (a short last window, ``num_items``) is applied through it."""

    @abc.abstractmethod
    def scale_gradients_(self, optimizer: torch.optim.Optimizer, factor: float | torch.Tensor) -> None:
        """Multiply the gradients that the next step of ``optimizer`` uses by ``factor``."""

    @abc.abstractmethod
    def discard_gradients_(self, optimizer: torch.optim.Optimizer) -> None:
        """ember skips this step of ``optimizer`` (a non-finite guard): drop the gradients accumulated for it."""
