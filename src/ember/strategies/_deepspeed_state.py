"""DeepSpeed state as data: ZeRO partitions written through ember's checkpoint package (JSON skeleton + safetensors),
never with DeepSpeed's own ``save_checkpoint`` (which pickles with ``torch.save``).

Per rank ``r``, for a model named ``model`` and its optimizer named ``optimizer``:

* ``optimizer.zero-rank{r}.json`` + ``.safetensors``: the ZeRO optimizer's partition (fp32 master weights and the
  optimizer's moments for this rank's slice), its loss scaler, and the engine's counters;
* ZeRO-1/2: ``model.safetensors`` (rank 0; parameters are replicated). ZeRO-3: ``model.zero-rank{r}.safetensors``
  (this rank's parameter partitions and the buffers), plus the gathered ``model.safetensors`` when
  ``zero3_save_16bit_model`` is set.

A checkpoint loads on the same world size and ZeRO stage; anything else is refused with the reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ember import checkpoint as ckpt

#: DeepSpeed state-dict entries that are objects or layout maps for its universal checkpoints: not saved
_DROPPED = ("param_slice_mappings", "universal_checkpoint_info")
_SCALER = "loss_scaler"
_COUNTERS = ("global_steps", "global_samples", "micro_steps", "skipped_steps")
_PLAIN = (bool, int, float, str, type(None), torch.dtype)


def optimizer_file(name: str, rank: int) -> str:
    return f"{name}.zero-rank{rank}"


def model_file(name: str, rank: int) -> str:
    return f"{name}.zero-rank{rank}.safetensors"


def _layout(zero_opt: Any, stage: int, dp_size: int) -> dict[str, Any]:
    masters = getattr(zero_opt, "single_partition_of_fp32_groups", None) or zero_opt.fp32_partitioned_groups_flat
    return {"stage": stage, "dp_size": dp_size, "partition_numels": [int(t.numel()) for t in masters]}


def optimizer_state(engine: Any, stage: int, dp_size: int) -> dict[str, Any]:
    """The ZeRO optimizer's state of this rank as plain data and tensors."""
    zero_opt = engine.optimizer
    state = dict(zero_opt.state_dict())
    for key in _DROPPED:
        state.pop(key, None)
    scaler = state.pop(_SCALER, None)
    state["zero_stage"] = int(state.get("zero_stage", stage))
    return {
        "zero": state,
        "loss_scaler": {k: v for k, v in vars(scaler).items() if isinstance(v, _PLAIN)} if scaler is not None else {},
        "layout": _layout(zero_opt, stage, dp_size),
        "engine": {k: int(getattr(engine, k, 0)) for k in _COUNTERS},
    }


def load_optimizer_state(engine: Any, state: dict[str, Any], stage: int, dp_size: int, where: str) -> None:
    """Restore what :func:`optimizer_state` saved into a freshly built engine of the same shape."""
    zero_opt = engine.optimizer
    saved, now = state.get("layout", {}), _layout(zero_opt, stage, dp_size)
    if saved != now:
        raise ckpt.CheckpointError(
            f"{where} holds ZeRO-{saved.get('stage')} partitions of {saved.get('dp_size')} processes "
            f"(sizes {saved.get('partition_numels')}); this run has ZeRO-{stage} on {dp_size} processes (sizes "
            f"{now['partition_numels']}). Resume with the same ZeRO stage, world size and model, or export the "
            "weights with accelerator.save_model() and start a new run from them."
        )
    sd = dict(state["zero"])
    scaler = zero_opt.loss_scaler
    for key, value in state.get("loss_scaler", {}).items():
        if hasattr(scaler, key):
            setattr(scaler, key, value)
    sd[_SCALER] = scaler
    clip = zero_opt.clip_grad
    zero_opt.load_state_dict([sd] * dp_size, load_optimizer_states=True, load_from_fp32_weights=True)
    zero_opt.clip_grad = clip  # ember sets clipping per step; the saved value is not a setting
    for key, value in state.get("engine", {}).items():
        setattr(engine, key, int(value))


def zero3_local_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """ZeRO-3: this rank's partition of every parameter, and the (replicated) buffers."""
    out: dict[str, torch.Tensor] = {f"param.{n}": p.ds_tensor for n, p in module.named_parameters()}  # type: ignore[attr-defined]
    out.update({f"buffer.{name}": b for name, b in module.named_buffers()})
    return out


@torch.no_grad()
def load_zero3_local_state(module: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    params, buffers = dict(module.named_parameters()), dict(module.named_buffers())
    expected = {f"param.{n}" for n in params} | {f"buffer.{n}" for n in buffers}
    if set(state) != expected:
        raise ckpt.CheckpointError(
            f"{where} holds {len(state)} tensors but the model has {len(expected)} parameters and buffers "
            f"(differences: {sorted(set(state) ^ expected)[:5]}). Resume with the model that saved it."
        )
    for name, p in params.items():
        p.ds_tensor.data.copy_(state[f"param.{name}"])  # type: ignore[attr-defined]
    for name, b in buffers.items():
        b.copy_(state[f"buffer.{name}"])


def gathered_params(module: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """ZeRO-3: each full parameter in turn (a collective on every rank), gathered one at a time so no rank ever
    holds the whole model; yields CPU copies on rank 0 only."""
    import deepspeed

    rank = dist.get_rank() if dist.is_initialized() else 0
    for name, p in module.named_parameters():
        with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
            if rank == 0:
                yield name, p.detach().to("cpu", copy=True)


@torch.no_grad()
def scatter_params(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """ZeRO-3: load full parameters (rank 0's copy wins), one parameter at a time."""
    import deepspeed

    rank = dist.get_rank() if dist.is_initialized() else 0
    for name, p in module.named_parameters():
        with deepspeed.zero.GatheredParameters([p], modifier_rank=0):
            if rank == 0:
                p.data.copy_(state[name])
    for name, b in module.named_buffers():
        if name in state:
            b.copy_(state[name])


def write_model_files(tmp: Path, name: str, module: torch.nn.Module, stage: int, rank: int,
                      gather: bool) -> None:
    """The model's part of a checkpoint on this rank (see the module docstring)."""
    if stage < 3:
        if rank == 0:
            ckpt.write_tensors(tmp, f"{name}.safetensors", dict(module.state_dict()))
        return
    ckpt.write_tensors(tmp, model_file(name, rank), zero3_local_state(module))
    if gather:
        full = dict(gathered_params(module))
        if rank == 0:
            full.update({n: b for n, b in module.named_buffers()})
            ckpt.write_tensors(tmp, f"{name}.safetensors", full)
