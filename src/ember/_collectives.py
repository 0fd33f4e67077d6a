"""The Accelerator's collective verbs (gather, reduce, broadcast, barriers, splitting work) and the nested
gather / pad / split helpers they are built on, over a Strategy's tensor collectives.

The verbs are methods of :class:`ember.Accelerator` (assigned there); their examples run on one process, where
every collective returns its input.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from ember import faults
from ember._errors import unknown_value
from ember.data import apply_to_tensors, find_batch_size
from ember.strategies.base import Strategy

if TYPE_CHECKING:
    from ember.accelerator import Accelerator


# ------------------------------------------------------------------------------------------------------
# Accelerator verbs
# ------------------------------------------------------------------------------------------------------
def gather(self: Accelerator, tensor: Any) -> Any:
    """Concatenate tensors (nested structures too) from every process along dim 0; sizes may differ.

    >>> from ember import Accelerator
    >>> Accelerator(cpu=True).gather({"preds": torch.tensor([1, 2])})  # one process: returned as it is
    {'preds': tensor([1, 2])}
    """
    return apply_to_tensors(tensor, lambda t: gather_varlen(self.strategy, t))


def gather_for_metrics(self: Accelerator, input_data: Any, use_gather_object: bool = False) -> Any:
    """Gather over the data-parallel ranks for evaluation, dropping the padding that evened out the last batch:
    over an epoch you get exactly ``len(dataset)`` items. Non-tensor data is gathered as a list of objects.

    >>> from ember import Accelerator
    >>> from torch.utils.data import DataLoader
    >>> accelerator = Accelerator(cpu=True, verbose=False)
    >>> loader = accelerator.prepare_data_loader(DataLoader(torch.arange(5), batch_size=2))
    >>> torch.cat([accelerator.gather_for_metrics(batch) for batch in loader])
    tensor([0, 1, 2, 3, 4])
    >>> accelerator.gather_for_metrics(["a", "b"])
    ['a', 'b']
    """
    state, group = self.gradient_state, self.strategy.dp_group()
    if use_gather_object or not has_tensor(input_data):
        objects = gather_objects(self.strategy, input_data, group)
        # per-item lists (one entry per sample) carry the same end padding as tensors do
        if state.end_of_dataloader and state.padding_in_batch and isinstance(input_data, (list, tuple)):
            objects = objects[: max(0, len(objects) - state.padding_in_batch)]
        return objects
    gathered = apply_to_tensors(input_data, lambda t: gather_varlen(self.strategy, t, group))
    if state.end_of_dataloader and state.padding_in_batch:
        size = find_batch_size(gathered)
        if size is not None:
            gathered = trim(gathered, size - state.padding_in_batch)
    return gathered


def reduce(self: Accelerator, tensor: Any, reduction: str = "sum", scale: float = 1.0) -> Any:
    """All-reduce tensors ("sum", "mean", "max", "min") across processes, then multiply by ``scale``.

    >>> from ember import Accelerator
    >>> Accelerator(cpu=True).reduce(torch.tensor([1.0, 3.0]), reduction="mean")
    tensor([1., 3.])
    """
    if reduction not in ("sum", "mean", "max", "min"):
        raise unknown_value("reduction", reduction, ["sum", "mean", "max", "min"])

    def one(t: torch.Tensor) -> torch.Tensor:
        out = self.strategy.all_reduce(t, reduction)
        return out * scale if scale != 1.0 else out

    return apply_to_tensors(tensor, one)


def broadcast(self: Accelerator, data: Any, from_process: int = 0) -> Any:
    """Broadcast tensors (in place) or a picklable object from ``from_process``.

    >>> from ember import Accelerator
    >>> accelerator = Accelerator(cpu=True)
    >>> accelerator.broadcast(torch.tensor([1, 2])), accelerator.broadcast({"seed": 7})
    (tensor([1, 2]), {'seed': 7})
    """
    if has_tensor(data):
        return apply_to_tensors(data, lambda t: self.strategy.broadcast(t, from_process))
    return self.strategy.broadcast_object(data, from_process)


def pad_across_processes(self: Accelerator, tensor: Any, dim: int = 0, pad_index: int = 0,
                         pad_first: bool = False) -> Any:
    """Pad tensors along ``dim`` to the largest size on any process (so they can be gathered).

    >>> from ember import Accelerator
    >>> Accelerator(cpu=True).pad_across_processes(torch.tensor([[1, 2]]), dim=1, pad_index=-1)
    tensor([[1, 2]])
    """
    return pad_across(self.strategy, tensor, dim, pad_index, pad_first)


def wait_for_everyone(self: Accelerator) -> None:
    """Barrier across all processes.

    >>> from ember import Accelerator
    >>> Accelerator(cpu=True).wait_for_everyone()  # returns at once with one process
    """
    with faults.named_collective(self.strategy, "wait_for_everyone()", lambda: self.gradient_state.attempted_steps):
        self.strategy.barrier()


@contextlib.contextmanager
def main_process_first(self: Accelerator) -> Iterator[None]:
    """Run the block on the main process first (e.g. to download or preprocess once), then the rest.

    >>> from ember import Accelerator
    >>> accelerator = Accelerator(cpu=True)
    >>> with accelerator.main_process_first():
    ...     accelerator.print("preparing the dataset")
    preparing the dataset
    """
    if not self.is_main_process:
        self.wait_for_everyone()
    yield
    if self.is_main_process:
        self.wait_for_everyone()


@contextlib.contextmanager
def local_main_process_first(self: Accelerator) -> Iterator[None]:
    """:meth:`main_process_first` per machine: local rank 0 runs the block first (node-local caches).

    >>> from ember import Accelerator
    >>> accelerator = Accelerator(cpu=True)
    >>> with accelerator.local_main_process_first():
    ...     accelerator.print("filling the local cache")
    filling the local cache
    """
    if not self.is_local_main_process:
        self.wait_for_everyone()
    yield
    if self.is_local_main_process:
        self.wait_for_everyone()


def split_between_processes(self: Accelerator, inputs: Any, apply_padding: bool = False) -> Any:
    """Context manager giving this process its contiguous share of a list/tuple/tensor/dict.

    >>> from ember import Accelerator
    >>> with Accelerator(cpu=True).split_between_processes(["a", "b", "c"]) as prompts:
    ...     prompts  # all of them with one process; rank r of n gets the r-th contiguous chunk
    ['a', 'b', 'c']
    """
    return split_between(self.process.rank, self.process.world_size, inputs, apply_padding)


# ------------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------------
def has_tensor(data: Any) -> bool:
    found = False

    def mark(t: torch.Tensor) -> torch.Tensor:
        nonlocal found
        found = True
        return t

    apply_to_tensors(data, mark)
    return found


def gather_varlen(strategy: Strategy, tensor: torch.Tensor, group: Any = None) -> torch.Tensor:
    """All-gather along dim 0 when ranks hold different lengths (pads, gathers, trims)."""
    if tensor.dim() == 0:
        tensor = tensor.reshape(1)
    if not strategy.is_distributed:
        return tensor
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = strategy.all_gather(size, group).tolist()
    longest = max(sizes)
    if all(s == longest for s in sizes):
        return strategy.all_gather(tensor, group)
    padded = pad_to(tensor, longest, dim=0)
    gathered = strategy.all_gather(padded, group)
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


def gather_objects(strategy: Strategy, obj: Any, group: Any = None) -> list[Any]:
    if not strategy.is_distributed:
        return obj if isinstance(obj, list) else [obj]
    out: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, obj, group=group)
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


def on_main_process(self: Accelerator, function: Callable[..., Any] | None = None) -> Any:
    """Decorator: run ``function`` on the main process only (returns None elsewhere).

    >>> from ember import Accelerator
    >>> accelerator = Accelerator(cpu=True)
    >>> @accelerator.on_main_process
    ... def report(x): return f"rank 0 says {x}"
    >>> report(1)
    'rank 0 says 1'
    """
    return _only_on(self.is_main_process, function)


def on_local_main_process(self: Accelerator, function: Callable[..., Any] | None = None) -> Any:
    """Decorator: run ``function`` on each machine's local main process only.

    >>> from ember import Accelerator
    >>> accelerator = Accelerator(cpu=True)
    >>> accelerator.on_local_main_process(lambda: "cache filled")()
    'cache filled'
    """
    return _only_on(self.is_local_main_process, function)


def on_last_process(self: Accelerator, function: Callable[..., Any]) -> Any:
    """Decorator: run ``function`` on the last process only.

    >>> from ember import Accelerator
    >>> Accelerator(cpu=True).on_last_process(lambda: "last")()
    'last'
    """
    return _only_on(self.is_last_process, function)


def on_process(self: Accelerator, function: Callable[..., Any] | None = None, process_index: int | None = None) -> Any:
    """Decorator: run ``function`` on process ``process_index`` only.

    >>> from ember import Accelerator
    >>> accelerator = Accelerator(cpu=True)
    >>> @accelerator.on_process(process_index=0)
    ... def hello(): return "hello from 0"
    >>> hello()
    'hello from 0'
    """
    if function is None:
        return lambda fn: on_process(self, fn, process_index)
    if process_index is None:
        raise TypeError("on_process(...) needs process_index=: the process that runs the function.")
    return _only_on(self.process_index == process_index, function)


def _only_on(selected: bool, function: Callable[..., Any] | None) -> Any:
    if function is None:
        return lambda fn: _only_on(selected, fn)

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return function(*args, **kwargs) if selected else None

    return wrapper


def set_trigger(self: Accelerator) -> None:
    """Raise this process's flag (e.g. "stop early"); :meth:`check_trigger` then tells every process.

    >>> from ember import Accelerator
    >>> accelerator = Accelerator(cpu=True)
    >>> accelerator.check_trigger()
    False
    >>> accelerator.set_trigger(); accelerator.check_trigger(), accelerator.check_trigger()  # read once, then reset
    (True, False)
    """
    self._trigger = True


def check_trigger(self: Accelerator) -> bool:
    """True on every process if any process called :meth:`set_trigger` since the last check (one all-reduce);
    the flag is then cleared: early stopping decided on one rank, acted on by all.

    >>> from ember import Accelerator
    >>> accelerator = Accelerator(cpu=True)
    >>> accelerator.set_trigger()
    >>> if accelerator.check_trigger():
    ...     print("stop on every process")
    stop on every process
    """
    flag = torch.tensor(1 if getattr(self, "_trigger", False) else 0, device=self.device)
    agreed = bool(self.strategy.all_reduce(flag, "max").item())
    if agreed:
        self._trigger = False  # check_trigger()'s flag (set_trigger raises it)
    return agreed
