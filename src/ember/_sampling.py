"""Sharding: a resumable, batch-interleaved sampler for map-style datasets and per-(rank, worker) shards of
iterable datasets. Re-exported by :mod:`ember.data` (see its docstring for the sharding layout)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Sized
from typing import Any

import torch
from torch.utils.data import IterableDataset, Sampler

from ember._errors import unknown_value


class ResumableSampler(Sampler[int]):
    """Shards (and optionally shuffles) a map-style dataset across ranks and can resume mid-epoch.

    Args:
        length: number of items in the dataset.
        batch_size: per-rank batch size; shards are whole batches (see the module docstring).
        num_replicas / rank: world size and this process's rank.
        shuffle: reshuffle every epoch with ``seed + epoch`` (the permutation ``torch.randperm`` draws from a
            generator seeded so, as ``torch.utils.data.DistributedSampler`` does).
        even_batches: pad the last round by repeating items from the start so every rank gets the same
            number of batches (``gather_for_metrics`` drops the repeats). If False, ranks may get fewer.
        drop_last: drop the last incomplete round instead of padding.

    ``start_batch`` (set by the loader for a resumed epoch) skips that many of this rank's batches without
    building them; ``len()`` is what is left, computed without building the permutation.

    >>> s = ResumableSampler(10, batch_size=2, num_replicas=2, rank=1)
    >>> list(s), len(s)
    ([2, 3, 6, 7, 0, 1], 6)
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
        self.start_batch = 0  # batches of this epoch skipped (a resumed epoch)

    @property
    def total_size(self) -> int:
        """Items in one epoch across all ranks, padding included."""
        if self.num_replicas == 1:
            return self.length  # one process: the DataLoader's own drop_last applies as usual
        if self.drop_last:
            return (self.length // (self.batch_size * self.num_replicas)) * self.batch_size * self.num_replicas
        if self.even_batches:
            return math.ceil(self.length / (self.batch_size * self.num_replicas)) * self.batch_size * self.num_replicas
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
        return max(0, self.num_local_items() - self.start_batch * self.batch_size)

    def num_local_items(self) -> int:
        """Items this rank gets in a whole epoch, padding included (O(1): no permutation is built)."""
        total, size, world = self.total_size, self.batch_size, self.num_replicas
        batches = -(-total // size)  # global batches; batch j goes to rank j % world
        mine = max(0, -(-(batches - self.rank) // world))
        items = mine * size
        if mine and (batches - 1) % world == self.rank:
            items -= batches * size - total  # the epoch's last batch is this rank's, and it may be short
        return items


#: what an IterableDataset can split its items by (see :func:`splits_itself`)
SHARD_AXES = ("rank", "worker")


def splits_itself(dataset: Any) -> frozenset[str]:
    """What an IterableDataset already splits its items by: a subset of ``{"rank", "worker"}``.

    ``prepare`` shards an IterableDataset by whatever it does not split itself, so every item is read by one
    worker of one process, once. The rule, first match wins:

    1. A ``sharded_by`` attribute on the dataset (or its class), a tuple of ``"rank"`` and/or ``"worker"``.
       Set ``sharded_by = ("worker",)`` on a dataset that splits its stream across DataLoader workers itself
       (it reads ``torch.utils.data.get_worker_info()``), ``("rank", "worker")`` on one that also splits it
       across processes, and ``()`` to have ember split it by both.
    2. A Hugging Face ``datasets.IterableDataset`` (it has ``n_shards``) splits by worker, and by rank as well
       once ``datasets.distributed.split_dataset_by_node`` was applied to it.
    3. Anything else splits by nothing: ember splits it by (rank, worker). Each worker then still reads the whole
       stream and keeps its share: a dataset that can read only its own share should split itself, and say so.

    >>> class Files(IterableDataset):
    ...     sharded_by = ("worker",)  # its __iter__ reads only this worker's files
    >>> sorted(splits_itself(Files)), sorted(splits_itself(IterableDataset))
    (['worker'], [])
    """
    declared = getattr(dataset, "sharded_by", None)
    if declared is not None:
        values = (declared,) if isinstance(declared, str) else tuple(declared)
        for value in values:
            if value not in SHARD_AXES:
                raise unknown_value(f"{type(dataset).__name__}.sharded_by item", value, SHARD_AXES)
        return frozenset(values)
    if type(dataset).__module__.split(".")[0] == "datasets" and hasattr(dataset, "n_shards"):
        return frozenset(SHARD_AXES) if getattr(dataset, "_distributed", None) else frozenset({"worker"})
    return frozenset()


class IterableShard(IterableDataset[Any]):
    """Gives this process (rank ``rank`` of ``world_size``) and DataLoader worker its share of an IterableDataset.

    Items are read in groups; each share takes one item of every complete group, so all shares get the same
    number of items (at most ``group - 1`` trailing items are dropped). With ``split_workers`` a group is
    ``world_size * num_workers`` items and a share is a (rank, worker); without it (a dataset that splits
    itself across workers, see :func:`splits_itself`) each worker's own stream is split by rank only.
    """

    def __init__(
        self, dataset: Iterable[Any], rank: int, world_size: int, *, split_workers: bool = True, num_workers: int = 0
    ) -> None:
        self.dataset = dataset
        self.rank = rank
        self.world_size = world_size
        self.split_workers = split_workers
        self.num_workers = num_workers

    def _share(self) -> tuple[int, int]:
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None and self.split_workers else (1, 0)
        return self.world_size * workers, self.rank * workers + worker

    def __iter__(self) -> Iterator[Any]:
        group, slot = self._share()
        it = iter(self.dataset)
        while True:
            chunk = list(itertools.islice(it, group))
            if len(chunk) < group:
                return
            yield chunk[slot]

    def __len__(self) -> int:
        """Items this process gets in all (exact unless the dataset splits itself across workers)."""
        if not isinstance(self.dataset, Sized):
            raise TypeError(f"{type(self.dataset).__name__} has no len()")
        workers = max(1, self.num_workers) if self.split_workers else 1
        return len(self.dataset) // (self.world_size * workers) * workers

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
