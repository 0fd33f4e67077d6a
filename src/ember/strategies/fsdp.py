"""Fully sharded data parallel with PyTorch's FSDP2 (``torch.distributed.fsdp.fully_shard``), both layers.

Applied as torchtitan does: activation checkpointing of the chosen blocks, optional per-block ``torch.compile``, then
``fully_shard`` per block bottom-up, then the root. Parameters stay in float32 (sharded); ``"bf16-mixed"`` /
``"16-mixed"`` become a ``MixedPrecisionPolicy`` (compute in the low dtype, gradients reduced in float32). Optimizers
are rebound to the sharded parameters. Checkpoints are sharded per rank (safetensors + JSON, see
:mod:`ember.checkpoint._sharded`) and reshard on load to any world size.

>>> FSDPStrategy(sharding_strategy="SHARD_GRAD_OP").reshard_after_forward
False
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ember._errors import EmberConfigError, did_you_mean, unknown_value
from ember._log import info
from ember.precision import MixedPrecision, Precision
from ember.strategies._group import close_at_exit, destroy_process_group, init_process_group
from ember.strategies.base import BackwardSyncControl, ForwardRedirection, Reshardable, Strategy
from ember.strategies.topology import Topology

if TYPE_CHECKING:
    from ember._env import ProcessInfo

#: Lightning's / FSDP1's sharding strategies on FSDP2: (reshard_after_forward, hybrid)
SHARDING_STRATEGIES = {"FULL_SHARD": (True, False), "SHARD_GRAD_OP": (False, False), "HYBRID_SHARD": (True, True),
                       "_HYBRID_SHARD_ZERO2": (False, True), "HYBRID_SHARD_ZERO2": (False, True)}
_ACCELERATE_NUMBERS = {1: "FULL_SHARD", 2: "SHARD_GRAD_OP", 3: "NO_SHARD", 4: "HYBRID_SHARD", 5: "HYBRID_SHARD_ZERO2"}
STATE_DICT_TYPES = {"sharded": "sharded", "sharded_state_dict": "sharded", "full": "full", "full_state_dict": "full"}
Policy = Any  # a set of classes or class names, a callable(module) -> bool, or None


class FSDPMixedPrecision(MixedPrecision):
    """``"bf16-mixed"`` / ``"16-mixed"`` under FSDP2: a ``MixedPrecisionPolicy`` instead of autocast; float32
    sharded parameters; under fp16 an overflow found in any rank's gradient shard skips the step on every rank."""

    def __init__(self, base: MixedPrecision, device_type: str) -> None:
        super().__init__(base.dtype, device_type, base.scaler_kwargs)
        self.uses_autocast = False
        self.float32_outputs = base.float32_outputs

    def policy(self, root: bool = False) -> Any:
        """The blocks' policy; the root's also casts the model's outputs to float32 when ``float32_outputs``."""
        from torch.distributed.fsdp import MixedPrecisionPolicy

        output = torch.float32 if root and self.float32_outputs else None
        return MixedPrecisionPolicy(param_dtype=self.dtype, reduce_dtype=torch.float32, output_dtype=output)

    def autocast(self, device_type: str) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        first = self.scaler is not None and id(optimizer) not in self._unscaled
        super().unscale_(optimizer)
        if first and self.scaler is not None and torch.distributed.is_initialized():
            for found in self.scaler._per_optimizer_states[id(optimizer)]["found_inf_per_device"].values():
                torch.distributed.all_reduce(found, op=torch.distributed.ReduceOp.MAX)  # on the device: no sync


class FSDPStrategy(Strategy, BackwardSyncControl, ForwardRedirection, Reshardable):
    """Shard parameters, gradients and optimizer state over the data-parallel ranks (FSDP2).

    Args:
        auto_wrap_policy: which blocks get their own ``fully_shard`` (a set of module classes or class names, or a
            callable ``module -> bool``); default: a transformers model's ``_no_split_modules``, else the root only.
        activation_checkpointing_policy: blocks to recompute in backward (same forms; ``True``: the wrapped blocks).
        sharding_strategy: ``"FULL_SHARD"`` (default), ``"SHARD_GRAD_OP"`` (no reshard after forward),
            ``"HYBRID_SHARD"`` (replicate across nodes, shard within: a ``(dp_replicate, dp_shard)`` mesh),
            ``"_HYBRID_SHARD_ZERO2"``.
        reshard_after_forward: overrides what ``sharding_strategy`` implies.
        device_mesh: ``(dp_replicate, dp_shard)`` sizes for hybrid sharding (default: shard within a node).
        cpu_offload: keep sharded parameters, gradients and optimizer state on the CPU.
        state_dict_type: ``"sharded"`` (default: each rank writes its shards; reshards on load) or ``"full"``.
        cpu_ram_efficient_loading: under ``init_module()`` only rank 0 builds real weights; the others build on the
            ``meta`` device and receive their shards from rank 0.
        compile_blocks: ``torch.compile`` each wrapped block before sharding.
        min_num_params: also wrap any block with at least this many parameters (Accelerate's SIZE_BASED_WRAP).
        sync_each_micro_batch: reduce-scatter gradients on every micro-batch of an accumulation window (less
            memory: gradients stay sharded) instead of once at its end (less communication, the default).
    """

    name = "fsdp"

    def __init__(
        self,
        auto_wrap_policy: Policy = None,
        activation_checkpointing_policy: Policy = None,
        sharding_strategy: str = "FULL_SHARD",
        reshard_after_forward: bool | None = None,
        device_mesh: tuple[int, int] | None = None,
        cpu_offload: bool = False,
        state_dict_type: str = "sharded",
        cpu_ram_efficient_loading: bool = False,
        compile_blocks: bool = False,
        min_num_params: int = 0,
        sync_each_micro_batch: bool = False,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        key = str(sharding_strategy).upper()
        if key == "NO_SHARD":
            raise EmberConfigError("sharding_strategy='NO_SHARD' replicates everything: use strategy='ddp'.")
        if key not in SHARDING_STRATEGIES:
            raise unknown_value("sharding_strategy", sharding_strategy, list(SHARDING_STRATEGIES))
        default_reshard, self.hybrid = SHARDING_STRATEGIES[key]
        self.sharding_strategy = key
        self.reshard_after_forward = default_reshard if reshard_after_forward is None else bool(reshard_after_forward)
        if state_dict_type.lower() not in STATE_DICT_TYPES:
            raise unknown_value("state_dict_type", state_dict_type, ["sharded", "full"])
        self.state_dict_type = STATE_DICT_TYPES[state_dict_type.lower()]
        self.auto_wrap_policy, self.activation_checkpointing_policy = auto_wrap_policy, activation_checkpointing_policy
        self.device_mesh, self.cpu_offload, self.min_num_params = device_mesh, cpu_offload, int(min_num_params)
        self.cpu_ram_efficient_loading, self.compile_blocks = cpu_ram_efficient_loading, compile_blocks
        self.sync_each_micro_batch, self.backend = sync_each_micro_batch, backend
        self._owns_group = False
        self._param_map: dict[int, torch.nn.Parameter] = {}
        self._rank0_state: dict[int, dict[str, torch.Tensor]] = {}
        self._blocks = 0

    # lifecycle ------------------------------------------------------------------------------------------
    def build_topology(self, process: ProcessInfo) -> Topology:
        if self.device_mesh is not None:
            replicate, shard = self.device_mesh
            return Topology.build(process.world_size, process.rank, dp_replicate=replicate, dp_shard=shard)
        if self.hybrid:  # replicate across machines, shard within one
            return Topology.build(process.world_size, process.rank, dp_shard=process.local_world_size)
        return Topology.build(process.world_size, process.rank, dp_replicate=1, dp_shard=process.world_size)

    def setup_environment(self) -> None:
        self._owns_group = init_process_group(self.process, self.device, self.timeout, self.backend, self.name)
        if self._owns_group:
            close_at_exit(self, FSDPStrategy.teardown)

    def teardown(self) -> None:
        if self._owns_group:
            destroy_process_group()
            self._owns_group = False

    def negotiate_precision(self, precision: Precision) -> Precision:
        if isinstance(precision, MixedPrecision) and not isinstance(precision, FSDPMixedPrecision):
            precision = FSDPMixedPrecision(precision, self.device.type)
        self._precision = precision
        return precision

    def distributed_type(self) -> str:
        return "FSDP"

    def describe(self) -> str:
        mesh = "x".join(str(v) for k, v in self.topology.shape.items() if v > 1 or k == "dp_shard")
        return (f"model sharded with FSDP2 on {self.device} (fully_shard on {self._blocks} block(s) + root, "
                f"reshard_after_forward={self.reshard_after_forward}, mesh {mesh})")

    # construction -------------------------------------------------------------------------------------------
    def module_init_context(self, empty_init: bool | None = None) -> contextlib.AbstractContextManager[Any]:
        """``meta`` with ``empty_init=True`` (every rank), or on ranks > 0 under ``cpu_ram_efficient_loading``."""
        if empty_init or (self.cpu_ram_efficient_loading and self.process.rank > 0):
            return torch.device("meta")
        return torch.device("cpu") if self.cpu_ram_efficient_loading else torch.device(self.device)

    def module_to_device(self, module: torch.nn.Module) -> torch.nn.Module:
        return module  # fully_shard moves each shard to the device: the whole model never sits there at once

    def setup(
        self, module: torch.nn.Module, optimizers: Sequence[torch.optim.Optimizer]
    ) -> tuple[torch.nn.Module, list[torch.optim.Optimizer]]:
        wrapped = self.setup_module(module)
        return wrapped, [self.setup_optimizer(opt) for opt in optimizers]

    def setup_module(self, module: torch.nn.Module) -> torch.nn.Module:
        from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

        if self.cpu_ram_efficient_loading and self.process.rank == 0:  # the weights every rank will receive
            self._rank0_state[id(module)] = {k: v.detach().cpu() for k, v in module.state_dict().items()}
        blocks = self._wrap_targets(module)
        ac_targets = blocks if self.activation_checkpointing_policy is True else \
            _matching(module, self.activation_checkpointing_policy)
        if ac_targets:
            wrappers = _checkpoint(module, ac_targets)  # shard the wrapper, so recomputation unshards too
            blocks = [wrappers.get(id(b), b) for b in blocks]
        before = dict(module.named_parameters())
        mesh = self._mesh()
        kwargs: dict[str, Any] = {"mesh": mesh, "reshard_after_forward": self.reshard_after_forward,
                                  "offload_policy": CPUOffloadPolicy() if self.cpu_offload else OffloadPolicy()}
        policy = getattr(self._precision_plugin(), "policy", None)
        if policy is not None:
            kwargs["mp_policy"] = policy()
        for block in reversed(blocks):  # bottom-up, then the root
            if self.compile_blocks:
                block.compile()
            fully_shard(block, **kwargs)
        root = {**kwargs, "reshard_after_forward": self.reshard_after_forward and not blocks}
        if policy is not None:
            root["mp_policy"] = policy(root=True)
        fully_shard(module, **root)
        self._blocks = len(blocks)
        self._materialize(module)
        after = dict(module.named_parameters())
        self._param_map.update({id(p): after[n] for n, p in before.items() if n in after})
        return module

    def setup_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Point ``optimizer`` at the sharded parameters (it must not have taken a step yet)."""
        if optimizer.state:
            raise EmberConfigError(
                f"{type(optimizer).__name__} already holds state (it stepped before prepare). Under FSDP create the "
                "optimizer fresh and prepare it with its model; load a checkpoint after prepare().")
        for group in optimizer.param_groups:
            group["params"] = [self._param_map.get(id(p), p) for p in group["params"]]
        return optimizer

    def _mesh(self) -> Any:
        mesh = self.topology.mesh(self.device.type)
        names = mesh.mesh_dim_names or ()
        if "dp_replicate" in names and "dp_shard" in names:
            return mesh["dp_replicate", "dp_shard"]
        return mesh["dp_shard"] if "dp_shard" in names else mesh

    def _precision_plugin(self) -> Any:
        return getattr(self, "_precision", None)

    def _wrap_targets(self, module: torch.nn.Module) -> list[torch.nn.Module]:
        policy = self.auto_wrap_policy
        if policy is None:
            policy = set(getattr(module, "_no_split_modules", None) or ())
        targets = _matching(module, policy)
        if self.min_num_params:
            targets += [m for m in module.modules() if m is not module and m not in targets
                        and sum(p.numel() for p in m.parameters()) >= self.min_num_params
                        and not any(m in set(t.modules()) for t in targets)]
        return targets

    def _materialize(self, module: torch.nn.Module) -> None:
        on_meta = any(p.is_meta for p in module.parameters()) or any(b.is_meta for b in module.buffers())
        if not on_meta and not self.cpu_ram_efficient_loading:
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        module.to_empty(device=self.device)
        if self.cpu_ram_efficient_loading:
            state: Any = self._rank0_state.pop(id(module), {})
            set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True,
                                                                           broadcast_from_rank0=True))
            return
        with torch.no_grad():
            for sub in module.modules():
                reset = getattr(sub, "reset_parameters", None)
                if callable(reset):
                    reset()

    def eval_context(self, inference: bool = True) -> contextlib.AbstractContextManager[Any]:
        """``torch.no_grad`` even for ``inference_mode=True``: parameters unsharded under inference mode would be
        inference tensors that the next training step cannot use (as in Lightning)."""
        return torch.no_grad()

    # the step -----------------------------------------------------------------------------------------------
    def no_backward_sync(self, module: torch.nn.Module) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext() if self.sync_each_micro_batch else _no_gradient_sync(module)

    def clip_grad_norm_(
        self, module: torch.nn.Module | None, parameters: Iterable[torch.nn.Parameter], max_norm: float,
        norm_type: float = 2.0,
    ) -> torch.Tensor:
        """The norm over every rank's gradient shard (the same as DDP's), then clip every shard by it."""
        params = [p for p in parameters if p.grad is not None]
        total = torch.nn.utils.get_total_norm([p.grad for p in params], norm_type, foreach=True)  # type: ignore[misc]
        if hasattr(total, "full_tensor"):
            total = total.full_tensor()
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total, foreach=True)
        return total

    # state ----------------------------------------------------------------------------------------------
    def model_state_dict(self, module: torch.nn.Module) -> dict[str, torch.Tensor]:
        """Full weights on rank 0's CPU, gathered one tensor at a time (other ranks get an empty dict)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state: Any = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return state  # type: ignore[no-any-return]

    def load_model_state_dict(self, module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        full: Any = state
        set_model_state_dict(module, full, options=StateDictOptions(full_state_dict=True))

    def optimizer_state_dict(self, module: torch.nn.Module | None, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(_need(module), optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load_optimizer_state_dict(
        self, module: torch.nn.Module | None, optimizer: torch.optim.Optimizer, state: dict[str, Any]
    ) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(_need(module), optimizer, state, options=StateDictOptions(full_state_dict=True))

    def save_checkpoint(self, tmp: Path, models: Sequence[tuple[str, torch.nn.Module]],
                        optimizers: Sequence[tuple[str, torch.nn.Module | None, torch.optim.Optimizer]]) -> None:
        if self.state_dict_type == "full":
            return super().save_checkpoint(tmp, models, optimizers)
        from ember.strategies import _fsdp_state

        writes = self.topology.coordinate("dp_replicate") == 0  # one replica of each shard is enough
        for name, module in models:
            _fsdp_state.save_model(tmp, name, module, self.process.rank, writes)
        for name, owner, optimizer in optimizers:
            _fsdp_state.save_optimizer(tmp, name, _need(owner), optimizer, self.process.rank, writes)
        return None

    def load_checkpoint(self, path: Path, models: Sequence[tuple[str, torch.nn.Module]],
                        optimizers: Sequence[tuple[str, torch.nn.Module | None, torch.optim.Optimizer]]) -> None:
        from ember.strategies import _fsdp_state

        if not (path / "model").is_dir() and not any((path / n).is_dir() for n, _ in models):
            return super().load_checkpoint(path, models, optimizers)  # saved with state_dict_type="full"
        for name, module in models:
            _fsdp_state.load_model(path, name, module)
        for name, owner, optimizer in optimizers:
            _fsdp_state.load_optimizer(path, name, _need(owner), optimizer)

    def configure(self, settings: Mapping[str, Any], source: str = "the launch config") -> None:
        """Accelerate's ``fsdp_config`` keys (``fsdp_`` prefix optional, as Accelerate tolerates)."""
        from ember.strategies._fsdp_config import apply_accelerate_config

        apply_accelerate_config(self, settings, source)


def _need(module: torch.nn.Module | None) -> torch.nn.Module:
    if module is None:
        raise EmberConfigError("under FSDP every prepared optimizer must belong to a prepared model: prepare the "
                               "model together with (or before) its optimizer.")
    return module


@contextlib.contextmanager
def _no_gradient_sync(module: torch.nn.Module) -> Iterator[None]:
    setter = getattr(module, "set_requires_gradient_sync", None)
    if setter is None:
        yield
        return
    setter(False)
    try:
        yield
    finally:
        setter(True)


def _matching(module: torch.nn.Module, policy: Policy) -> list[torch.nn.Module]:
    """Submodules selected by ``policy`` (classes, class names, or a predicate), outermost first."""
    if policy is None or policy is False or policy == set():
        return []
    if callable(policy) and not isinstance(policy, type):
        test: Callable[[torch.nn.Module], bool] = policy
    else:
        items = {policy} if isinstance(policy, (str, type)) else set(policy)
        names = {p for p in items if isinstance(p, str)}
        classes = tuple(p for p in items if isinstance(p, type))
        known = {type(m).__name__ for m in module.modules()}
        missing = sorted(n for n in names if n not in known)
        if missing:
            raise EmberConfigError(
                f"the wrap policy names {missing}, but the model has no module of that class.{did_you_mean(missing[0], known)} "
                f"Its classes: {', '.join(sorted(known))[:400]}.")

        def test(m: torch.nn.Module) -> bool:
            return type(m).__name__ in names or (bool(classes) and isinstance(m, classes))

    return [m for m in module.modules() if m is not module and test(m)]


def _checkpoint(module: torch.nn.Module, targets: list[torch.nn.Module]) -> dict[int, torch.nn.Module]:
    """Wrap ``targets`` for activation checkpointing; returns ``id(block) → its wrapper``."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        CheckpointWrapper,
        apply_activation_checkpointing,
        checkpoint_wrapper,
    )

    chosen = {id(m) for m in targets}
    apply_activation_checkpointing(module, checkpoint_wrapper_fn=checkpoint_wrapper,
                                   check_fn=lambda m: id(m) in chosen)
    if module.training is not None and torch.distributed.is_initialized() and torch.distributed.get_rank() == 0:
        info(f"activation checkpointing on {len(targets)} block(s)")
    return {id(w._checkpoint_wrapped_module): w for w in module.modules() if isinstance(w, CheckpointWrapper)}
