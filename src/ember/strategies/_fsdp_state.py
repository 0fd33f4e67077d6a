"""FSDP2 model and optimizer state as per-rank shards (:mod:`ember.checkpoint._sharded`), reshardable on load.

Saved: ``<ckpt>/<model name>/shard-r*.{safetensors,json}`` holds each rank's local pieces of every DTensor (and,
from rank 0, the unsharded tensors); ``<ckpt>/<optimizer name>/`` holds the optimizer's sharded tensors the same
way plus ``structure.json`` (param groups, scalar state such as ``step``) written by rank 0. Loaded: each rank
computes the box of every tensor it holds under the *current* mesh and reads only that box, so a checkpoint written
by N ranks loads on M.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ember import checkpoint as ckpt
from ember.checkpoint._sharded import Piece, ShardReader, save_shards

_MARK = "__ember_sharded__"


def _is_dtensor(value: Any) -> bool:
    return type(value).__name__ == "DTensor"


def _piece(value: Any) -> Piece:
    """This rank's local part of ``value`` with the global shape and its offset."""
    if _is_dtensor(value):
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        _, offset = compute_local_shape_and_global_offset(value.shape, value.device_mesh, value.placements)
        local = value.to_local()  # type: ignore[attr-defined]
        return local.detach(), tuple(value.shape), tuple(int(o) for o in offset)
    return value.detach(), tuple(value.shape), (0,) * value.dim()


def _box(like: Any, global_shape: list[int]) -> tuple[list[int], list[int]]:
    """(offset, size) of the part of a tensor of ``global_shape`` that this rank holds with ``like``'s layout."""
    if not _is_dtensor(like):
        return [0] * len(global_shape), list(global_shape)
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    size, offset = compute_local_shape_and_global_offset(global_shape, like.device_mesh, like.placements)
    return [int(o) for o in offset], [int(s) for s in size]


def _place(local: torch.Tensor, like: Any, global_shape: list[int]) -> Any:
    """``local`` as a tensor laid out like ``like`` (a DTensor on its mesh, or a plain tensor on its device)."""
    if not _is_dtensor(like):
        return local.to(like.device if isinstance(like, torch.Tensor) else "cpu")
    from torch.distributed.tensor import DTensor

    local = local.to(like.to_local().device)
    stride = torch.empty(global_shape, device="meta").stride()
    return DTensor.from_local(local, like.device_mesh, like.placements, run_check=False,
                              shape=torch.Size(global_shape), stride=stride)


def _sharded_model_state(module: torch.nn.Module) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=False))


# ------------------------------------------------------------------------------------------------------
# model
# ------------------------------------------------------------------------------------------------------
def save_model(tmp: Path, name: str, module: torch.nn.Module, rank: int, writes: bool) -> None:
    state = _sharded_model_state(module)
    if not writes:
        return
    pieces = {k: _piece(v) for k, v in state.items() if _is_dtensor(v) or rank == 0}
    save_shards(tmp, name, rank, pieces)


def load_model(path: Path, name: str, module: torch.nn.Module) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    reader = ShardReader(path, name)
    target = _sharded_model_state(module)
    loaded: dict[str, Any] = {}
    for key, like in target.items():
        shape = reader.shape(key)
        if list(like.shape) != shape:
            raise ckpt.CheckpointError(f"{path / name}: {key!r} was saved with shape {shape}, the model has "
                                       f"{list(like.shape)}. Resume with the same model.")
        offset, size = _box(like, shape)
        loaded[key] = _place(reader.read(key, offset, size).to(like.dtype), like, shape)
    set_model_state_dict(module, loaded, options=StateDictOptions(full_state_dict=False, strict=True))


# ------------------------------------------------------------------------------------------------------
# optimizer
# ------------------------------------------------------------------------------------------------------
def save_optimizer(tmp: Path, name: str, module: torch.nn.Module, optimizer: torch.optim.Optimizer, rank: int,
                   writes: bool) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    state: Any = get_optimizer_state_dict(module, optimizer, options=StateDictOptions(full_state_dict=False))
    if not writes:
        return
    pieces: dict[str, Piece] = {}
    skeleton: dict[str, dict[str, Any]] = {}
    for fqn, entries in state["state"].items():
        skeleton[fqn] = {}
        for key, value in entries.items():
            if _is_dtensor(value):
                pieces[f"{fqn}::{key}"] = _piece(value)
                skeleton[fqn][key] = {_MARK: f"{fqn}::{key}"}
            else:
                skeleton[fqn][key] = value.detach().cpu() if isinstance(value, torch.Tensor) else value
    save_shards(tmp, name, rank, pieces)
    if rank == 0:
        ckpt.save_state(tmp, f"{name}/structure", {"state": skeleton, "param_groups": state["param_groups"]})


def load_optimizer(path: Path, name: str, module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    saved = ckpt.load_state(path, f"{name}/structure")
    reader = ShardReader(path, name)
    params = _sharded_model_state(module)
    state: dict[str, dict[str, Any]] = {}
    for fqn, entries in saved["state"].items():
        like = params.get(fqn)
        if like is None:
            raise ckpt.CheckpointError(f"{path / name}: optimizer state for {fqn!r}, which the model does not have. "
                                       "Resume with the same model and optimizer.")
        state[fqn] = {}
        for key, value in entries.items():
            if isinstance(value, dict) and _MARK in value:
                shape = reader.shape(value[_MARK])
                offset, size = _box(like, shape)
                state[fqn][key] = _place(reader.read(value[_MARK], offset, size), like, shape)
            else:
                state[fqn][key] = value
    full: Any = {"state": state, "param_groups": saved["param_groups"]}
    set_optimizer_state_dict(module, optimizer, full, options=StateDictOptions(full_state_dict=False))
