"""Nested gather / pad / split helpers built on a Strategy's tensor collectives."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist

from ember.data import apply_to_tensors
from ember.strategies.base import Strategy


def gather_varlen(strategy: Strategy, tensor: torch.Tensor) -> torch.Tensor:
    """All-gather along dim 0 when ranks hold different lengths (pads, gathers, trims)."""
    if tensor.dim() == 0:
        tensor = tensor.reshape(1)
    if not strategy.is_distributed:
        return tensor
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = strategy.all_gather(size).tolist()
    longest = max(sizes)
    if all(s == longest for s in sizes):
        return strategy.all_gather(tensor)
    padded = pad_to(tensor, longest, dim=0)
    gathered = strategy.all_gather(padded)
    parts = [gathered[i * longest : i * longest + s] for i, s in enumerate(sizes)]
    return torch.cat(parts, dim=0)


def pad_to(tensor: torch.Tensor, length: int, dim: int = 0, pad_index: int = 0, pad_first: bool = False) -> torch.Tensor:
    if tensor.shape[dim] >= length:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = length - tensor.shape[dim]
    pad = tensor.new_full(shape, pad_index)
    return torch.cat([pad, tensor] if pad_first else [tensor, pad], dim=dim)


def pad_across(strategy: Strategy, data: Any, dim: int = 0, pad_index: int = 0, pad_first: bool = False) -> Any:
    """Pad every tensor in ``data`` along ``dim`` to the largest size any rank holds."""

    def pad_one(t: torch.Tensor) -> torch.Tensor:
        if t.dim() == 0 or not strategy.is_distributed:
            return t
        size = torch.tensor([t.shape[dim]], device=t.device)
        longest = int(strategy.all_reduce(size, "max").item())
        return pad_to(t, longest, dim=dim, pad_index=pad_index, pad_first=pad_first)

    return apply_to_tensors(data, pad_one)


def gather_objects(strategy: Strategy, obj: Any) -> list[Any]:
    if not strategy.is_distributed:
        return obj if isinstance(obj, list) else [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    flat: list[Any] = []
    for item in out:
        flat.extend(item if isinstance(item, list) else [item])
    return flat


def trim(data: Any, keep: int) -> Any:
    return apply_to_tensors(data, lambda t: t[:keep] if t.dim() > 0 else t)


@contextmanager
def split_between(rank: int, world: int, inputs: Any, apply_padding: bool = False) -> Iterator[Any]:
    """Yield this rank's contiguous share of a list, tuple, tensor or dict of them."""

    def share(seq: Any) -> Any:
        n = len(seq)
        per, extra = divmod(n, world)
        start = rank * per + min(rank, extra)
        end = start + per + (1 if rank < extra else 0)
        part = seq[start:end]
        if apply_padding and extra and len(part) < math.ceil(n / world) and n:
            last = seq[-1:]
            part = torch.cat([part, last]) if isinstance(seq, torch.Tensor) else part + type(part)(last)
        return part

    if isinstance(inputs, Mapping):
        yield {k: share(v) for k, v in inputs.items()}
    else:
        yield share(inputs)
