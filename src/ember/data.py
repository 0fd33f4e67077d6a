"""Data: a resumable sharding sampler, per-rank IterableDataset shards and a device-prefetching loader.

Sharding is batch-interleaved: the global (optionally shuffled) index list is cut into batches of
``batch_size`` and batch ``j`` goes to rank ``j % world_size``. Gathering one batch from every rank therefore
gives consecutive dataset items, and the padding added to even out the last round is always at the very end,
which is what lets :meth:`ember.Accelerator.gather_for_metrics` drop it exactly.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, RandomSampler, Sampler, SequentialSampler


def apply_to_tensors(data: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Apply ``fn`` to every tensor in nested dicts, lists, tuples, namedtuples and ``BatchEncoding``-likes."""
    if isinstance(data, torch.Tensor):
        return fn(data)
    if isinstance(data, Mapping):
        converted = {k: apply_to_tensors(v, fn) for k, v in data.items()}
        if type(data) is dict:
            return converted
        try:  # dict subclasses such as transformers' BatchEncoding keep their type
            return type(data)(converted)  # type: ignore[call-arg]
        except TypeError:
            return converted
    if isinstance(data, tuple) and hasattr(data, "_fields"):
        return type(data)(*(apply_to_tensors(v, fn) for v in data))
    if isinstance(data, (list, tuple)):
        return type(data)(apply_to_tensors(v, fn) for v in data)
    if hasattr(data, "to") and hasattr(data, "data") and isinstance(getattr(data, "data", None), Mapping):
        data.data = {k: apply_to_tensors(v, fn) for k, v in data.data.items()}
        return data
    return data


def move_to_device(data: Any, device: torch.device, non_blocking: bool = True) -> Any:
    """Move every tensor inside ``data`` to ``device`` (non-blocking where the source is pinned)."""
    return apply_to_tensors(data, lambda t: t.to(device, non_blocking=non_blocking))


def find_batch_size(data: Any) -> int | None:
    """The leading dimension of the first tensor found in ``data``, or None."""
    if isinstance(data, torch.Tensor):
        return int(data.shape[0]) if data.dim() > 0 else None
    if isinstance(data, Mapping):
        values: Iterable[Any] = data.values()
    elif isinstance(data, (list, tuple)):
        values = data
    elif hasattr(data, "data") and isinstance(getattr(data, "data", None), Mapping):
        values = data.data.values()
    else:
        return None
    for v in values:
        size = find_batch_size(v)
        if size is not None:
            return size
    return None


class ResumableSampler(Sampler[int]):
    """Shards (and optionally shuffles) a map-style dataset across ranks and can resume mid-epoch.

    Args:
        length: number of items in the dataset.
        batch_size: per-rank batch size; shards are whole batches (see the module docstring).
        num_replicas / rank: world size and this process's rank.
        shuffle: reshuffle every epoch with ``seed + epoch``.
        even_batches: pad the last round by repeating items from the start so every rank gets the same
            number of batches (``gather_for_metrics`` drops the repeats). If False, ranks may get fewer.
        drop_last: drop the last incomplete round instead of padding.

    >>> s = ResumableSampler(10, batch_size=2, num_replicas=2, rank=1)
    >>> list(s)
    [2, 3, 6, 7, 0, 1]
    """

    def __init__(
        self,
        length: int,
        *,
        batch_size: int = 1,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = False,
        seed: int = 0,
        even_batches: bool = True,
        drop_last: bool = False,
    ) -> None:
        self.length = length
        self.batch_size = max(1, batch_size)
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.seed = seed
        self.even_batches = even_batches
        self.drop_last = drop_last
        self.epoch = 0
        self.start_batch = 0  # batches of this epoch already consumed (set when resuming)

    @property
    def round_size(self) -> int:
        return self.batch_size * self.num_replicas

    @property
    def total_size(self) -> int:
        """Items in one epoch across all ranks, padding included."""
        if self.num_replicas == 1:
            return self.length  # one process: the DataLoader's own drop_last applies as usual
        if self.drop_last:
            return (self.length // self.round_size) * self.round_size
        if self.even_batches:
            return math.ceil(self.length / self.round_size) * self.round_size
        return self.length

    @property
    def num_padded(self) -> int:
        return max(0, self.total_size - self.length)

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle order of ``epoch`` (called automatically by ember's loader)."""
        self.epoch = epoch

    def _global_indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            indices = torch.randperm(self.length, generator=g).tolist()
        else:
            indices = list(range(self.length))
        total = self.total_size
        if total <= len(indices):
            return indices[:total]
        repeats = math.ceil((total - len(indices)) / max(1, len(indices)))
        return indices + (indices * repeats)[: total - len(indices)]

    def _local_indices(self) -> list[int]:
        indices = self._global_indices()
        bs, world = self.batch_size, self.num_replicas
        local: list[int] = []
        for start in range(self.rank * bs, len(indices), world * bs):
            local.extend(indices[start : start + bs])
        return local

    def __iter__(self) -> Iterator[int]:
        local = self._local_indices()
        return iter(local[self.start_batch * self.batch_size :])

    def __len__(self) -> int:
        return max(0, len(self._local_indices()) - self.start_batch * self.batch_size)

    def num_local_items(self) -> int:
        return len(self._local_indices())


class IterableShard(IterableDataset[Any]):
    """Gives rank ``r`` (and DataLoader worker ``w``) its share of an IterableDataset.

    Items are read in groups of ``world_size * num_workers``; each process takes one item of every complete
    group, so every rank sees the same number of items. At most ``group - 1`` trailing items are dropped.
    """

    def __init__(self, dataset: Iterable[Any], rank: int, world_size: int) -> None:
        self.dataset = dataset
        self.rank = rank
        self.world_size = world_size

    def __iter__(self) -> Iterator[Any]:
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        group = self.world_size * workers
        slot = self.rank * workers + worker
        it = iter(self.dataset)
        while True:
            chunk = list(itertools.islice(it, group))
            if len(chunk) < group:
                return
            yield chunk[slot]

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)


@dataclass
class LoaderState:
    """Position of a prepared loader: which epoch, how many batches of it were consumed."""

    epoch: int = 0
    batches_consumed: int = 0


class DeviceLoader:
    """Wraps a DataLoader: sets the epoch, moves batches to the device one batch ahead, tracks position.

    It looks one batch ahead, which both overlaps the host-to-device copy with compute (on CUDA the copy
    runs on a side stream) and tells the accelerator when the current batch is the last of the epoch, so
    a partial gradient-accumulation window at the end of an epoch still steps.
    """

    def __init__(
        self,
        dataloader: DataLoader[Any],
        device: torch.device,
        *,
        on_batch: Callable[[bool | None], None] | None = None,
        convert: Callable[[Any], Any] | None = None,
        sampler: ResumableSampler | None = None,
        device_placement: bool = True,
        num_padded: int = 0,
    ) -> None:
        self.base_dataloader = dataloader
        self.device = device
        self.sampler = sampler
        self.device_placement = device_placement
        self.state = LoaderState()
        self.num_padded = num_padded
        self._on_batch = on_batch
        self._convert = convert
        self._skip_next = 0
        self._stream: torch.cuda.Stream | None = (
            torch.cuda.Stream(device) if device.type == "cuda" and device_placement else None  # type: ignore[no-untyped-call,unused-ignore]
        )
        # DataLoader batches are built in host memory: on a CPU device there is nothing to move, per batch
        self._host_only = device.type == "cpu"
        self.end_of_dataloader = False

    # DataLoader-like surface -------------------------------------------------------------------------
    @property
    def dataset(self) -> Any:
        return self.base_dataloader.dataset

    @property
    def batch_size(self) -> int | None:
        return self.base_dataloader.batch_size

    def __len__(self) -> int:
        return len(self.base_dataloader)

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning (also done automatically after each full pass)."""
        self.state = LoaderState(epoch=epoch, batches_consumed=0)

    # resume ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.state.epoch, "batches_consumed": self.state.batches_consumed}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume at ``state``: the next iteration skips the consumed batches in the sampler, without loading them."""
        self.state = LoaderState(int(state["epoch"]), int(state["batches_consumed"]))

    # iteration ---------------------------------------------------------------------------------------
    def _move(self, batch: Any) -> Any:
        if self._convert is not None:
            batch = self._convert(batch)
        if not self.device_placement or self._host_only:
            return batch
        if self._stream is None:
            return move_to_device(batch, self.device, non_blocking=False)
        with torch.cuda.stream(self._stream):
            return move_to_device(batch, self.device, non_blocking=True)

    def _ready(self, batch: Any) -> Any:
        if self._stream is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(self._stream)

            def record(t: torch.Tensor) -> torch.Tensor:
                if t.is_cuda:
                    t.record_stream(current)
                return t

            apply_to_tensors(batch, record)
        return batch

    def __iter__(self) -> Iterator[Any]:
        state = self.state
        skip = state.batches_consumed
        if self.sampler is not None:
            self.sampler.set_epoch(state.epoch)
            self.sampler.start_batch = skip
            skip = 0
        elif hasattr(self.base_dataloader.dataset, "set_epoch"):
            self.base_dataloader.dataset.set_epoch(state.epoch)
        self.end_of_dataloader = False
        it = iter(self.base_dataloader)
        try:
            for _ in range(skip):  # no resumable sampler (e.g. IterableDataset): fast-forward
                next(it)
            current = self._move(next(it))
        except StopIteration:
            self._finish_epoch()
            return
        try:
            while True:
                try:
                    upcoming = self._move(next(it))
                except StopIteration:
                    break
                self._emit(False)
                yield self._ready(current)
                current = upcoming
            self.end_of_dataloader = True
            self._emit(True)
            yield self._ready(current)
        finally:
            if self.sampler is not None:
                self.sampler.start_batch = 0
        self._finish_epoch()

    def _emit(self, last: bool) -> None:
        self.state.batches_consumed += 1
        if self._on_batch is not None:
            self._on_batch(last)

    def _finish_epoch(self) -> None:
        self.state = LoaderState(epoch=self.state.epoch + 1, batches_consumed=0)
        self.end_of_dataloader = False
        if self._on_batch is not None:
            self._on_batch(None)  # the epoch is over: later accumulate() steps are not "end of data"


def sampler_kind(dataloader: DataLoader[Any]) -> str:
    """'random', 'sequential', 'iterable' or 'custom' — what ``prepare`` can shard."""
    if isinstance(dataloader.dataset, IterableDataset):
        return "iterable"
    if dataloader.batch_sampler is not None and type(dataloader.batch_sampler).__name__ != "BatchSampler":
        return "custom"
    if isinstance(dataloader.sampler, RandomSampler):
        return "random"
    if isinstance(dataloader.sampler, SequentialSampler):
        return "sequential"
    return "custom"


def rebuild_dataloader(dataloader: DataLoader[Any], **overrides: Any) -> DataLoader[Any]:
    """Recreate ``dataloader`` with the same settings and some replaced (sampler, dataset, pin_memory)."""
    kwargs: dict[str, Any] = {
        "dataset": dataloader.dataset,
        "batch_size": dataloader.batch_size,
        "num_workers": dataloader.num_workers,
        "collate_fn": dataloader.collate_fn,
        "pin_memory": dataloader.pin_memory,
        "drop_last": dataloader.drop_last,
        "timeout": dataloader.timeout,
        "worker_init_fn": dataloader.worker_init_fn,
        "persistent_workers": dataloader.persistent_workers,
    }
    if dataloader.num_workers > 0:
        kwargs["prefetch_factor"] = dataloader.prefetch_factor
        kwargs["multiprocessing_context"] = dataloader.multiprocessing_context
    if not isinstance(dataloader.dataset, IterableDataset):
        kwargs["sampler"] = dataloader.sampler
    kwargs.update(overrides)
    if "sampler" in overrides:
        kwargs["shuffle"] = False
    return DataLoader(**kwargs)


def dataset_length(dataloader: DataLoader[Any]) -> int | None:
    dataset = dataloader.dataset
    return len(dataset) if isinstance(dataset, Sized) else None
