"""Data: a resumable sharding sampler, per-rank IterableDataset shards and a device-prefetching loader.

Sharding is batch-interleaved: the global (optionally shuffled) index list is cut into batches of
``batch_size`` and batch ``j`` goes to rank ``j % world_size``. Gathering one batch from every rank therefore
gives consecutive dataset items, and the padding added to even out the last round is always at the very end,
which is what lets :meth:`ember.Accelerator.gather_for_metrics` drop it exactly.

Epochs: a prepared loader starts a new epoch on every ``iter()``, as a PyTorch DataLoader does; only a
position restored by ``load_state`` or set by :func:`skip_first_batches` is continued, by the first ``iter()``
after it (see :class:`DeviceLoader`).
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, RandomSampler, Sampler, SequentialSampler

from ember._errors import EmberConfigError, unknown_value


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


@dataclass
class LoaderState:
    """Position of a prepared loader: its epoch and how many of that epoch's batches were handed out.

    After an epoch ran to its end this is the next epoch at batch 0.
    """

    epoch: int = 0
    batches_consumed: int = 0


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of a loader's generator for ``epoch`` on ``rank`` (63 bits, well mixed).

    DataLoader workers are seeded from that generator, so their random streams differ across ranks and
    epochs, and an epoch started after a resume draws what it drew in the run that never stopped.

    >>> epoch_seed(0, 1, 0) == epoch_seed(0, 1, 0) != epoch_seed(0, 1, 1)
    True
    """
    import numpy as np

    state = np.random.SeedSequence([seed % 2**64, epoch, rank]).generate_state(2)
    return (int(state[0]) << 31) ^ int(state[1])


def _count(value: Any, call: str, name: str) -> int:
    """``value`` as an int >= 0, or an error naming the argument ``name`` of ``call``."""
    if isinstance(value, bool) or not hasattr(value, "__index__") or operator.index(value) < 0:
        raise EmberConfigError(f"{call}({name}={value!r}): expected an int >= 0.")
    return operator.index(value)


class DeviceLoader:
    """Wraps a DataLoader: runs its epochs, moves batches to the device one batch ahead, tracks position.

    Every ``iter()`` starts a new epoch, as with a PyTorch DataLoader, whether the previous one ran to its end,
    was left by ``break`` or was driven by ``next()``: the sampler (or a dataset's ``set_epoch``) is set to the
    next epoch, so a shuffled order changes every epoch. The exception is a position set by ``load_state``
    (:meth:`load_state_dict`), :func:`skip_first_batches` or :meth:`seek`: the first ``iter()`` after it
    continues that epoch at that batch, once. ``len(loader)`` is always the number of batches the next
    ``iter()`` yields; :attr:`batches_per_epoch` is a whole epoch's. ``state`` is where the loader is
    (checkpoints save it).

    With a seed (every loader ``prepare`` builds), the DataLoader's generator is reseeded at each epoch from
    (seed, epoch, rank) — see :func:`epoch_seed`. Random transforms done in DataLoader workers thus differ
    across ranks, and an epoch started after a resume repeats them exactly. In an epoch resumed mid-way, the
    remaining batches go to other workers than in the run that never stopped, so their worker-side random
    draws differ (the items and their order do not); with ``persistent_workers=True`` workers are seeded once.

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
        seed: int | None = None,
        rank: int = 0,
    ) -> None:
        self.base_dataloader = dataloader
        self.device = device
        self.sampler = sampler
        self.device_placement = device_placement
        self.state = LoaderState()
        self.num_padded = num_padded
        self._on_batch = on_batch
        self._convert = convert
        self.seed = seed  # of the shuffle order and the workers' random streams (None: the DataLoader's own)
        self._rank = rank
        self._resume = True  # the next iter() continues `state` (a new loader: epoch 0 from its start)
        self._iteration = 0  # only the newest iterator moves `state`; older ones yield on, untracked
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

    @property
    def batches_per_epoch(self) -> int:
        """Batches of one whole epoch on this process (``len(loader)`` counts what the next ``iter()`` yields)."""
        if self.sampler is not None:
            items, size = self.sampler.num_local_items(), self.sampler.batch_size
            return items // size if self.base_dataloader.drop_last else -(-items // size)
        return len(self.base_dataloader)

    def __len__(self) -> int:
        """Batches the next ``iter()`` yields: a whole epoch, or the rest of a resumed one."""
        return max(0, self.batches_per_epoch - self._next_start()[1])

    def set_seed(self, seed: int) -> None:
        """Seed the shuffle order and the workers' random streams (``load_state`` restores the saved seed)."""
        self.seed = seed
        if self.sampler is not None:
            self.sampler.seed = seed

    def set_epoch(self, epoch: int) -> None:
        """Run ``epoch`` (its shuffle order) at the next ``iter()``.

        Not needed (every ``iter()`` starts the next epoch), but harmless where a DistributedSampler habit
        calls it: a position that ``load_state`` or :func:`skip_first_batches` set in this same epoch is kept.
        """
        if not (self._resume and self.state.epoch == epoch):
            self.seek(epoch)

    def seek(self, epoch: int, batch: int = 0) -> None:
        """The next ``iter()`` runs ``epoch`` from its batch ``batch`` (counted from the epoch's start), once."""
        self.state = LoaderState(_count(epoch, "seek", "epoch"), _count(batch, "seek", "batch"))
        self._resume = True
        self._iteration += 1

    def _next_start(self) -> tuple[int, int]:
        """(epoch, first batch) of the next ``iter()``."""
        if self._resume:
            return self.state.epoch, self.state.batches_consumed
        return self.state.epoch + 1, 0

    # resume ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.state.epoch, "batches_consumed": self.state.batches_consumed}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume at ``state``: the next ``iter()`` continues that epoch there, skipping the consumed batches
        in the sampler without loading them (an IterableDataset is fast-forwarded)."""
        self.seek(int(state["epoch"]), int(state["batches_consumed"]))

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
        epoch, start = self._next_start()
        self.state = LoaderState(epoch, start)
        self._resume = False
        self._iteration += 1
        skip = start
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
            self.sampler.start_batch, skip = start, 0
        elif hasattr(self.base_dataloader.dataset, "set_epoch"):
            self.base_dataloader.dataset.set_epoch(epoch)
        generator = self.base_dataloader.generator
        if self.seed is not None and generator is not None:
            generator.manual_seed(epoch_seed(self.seed, epoch, self._rank))
        self.end_of_dataloader = False
        return self._batches(iter(self.base_dataloader), skip, self._iteration)

    def _batches(self, it: Iterator[Any], skip: int, iteration: int) -> Iterator[Any]:
        try:
            for _ in range(skip):  # no resumable sampler (e.g. an IterableDataset): fast-forward
                next(it)
            current = self._move(next(it))
        except StopIteration:
            self._finish_epoch(iteration)
            return
        while True:
            try:
                upcoming = self._move(next(it))
            except StopIteration:
                break
            self._emit(False, iteration)
            yield self._ready(current)
            current = upcoming
        self.end_of_dataloader = True
        self._emit(True, iteration)
        yield self._ready(current)
        self._finish_epoch(iteration)

    def _emit(self, last: bool, iteration: int) -> None:
        if iteration == self._iteration:
            self.state.batches_consumed += 1
        if self._on_batch is not None:
            self._on_batch(last)

    def _finish_epoch(self, iteration: int) -> None:
        if iteration == self._iteration:
            self.state = LoaderState(epoch=self.state.epoch + 1, batches_consumed=0)
            self._resume = True
        self.end_of_dataloader = False
        if self._on_batch is not None:
            self._on_batch(None)  # the epoch is over: later accumulate() steps are not "end of data"


class _SkipFirst:
    """A sampler or batch sampler without its first ``skip`` entries (indices only: nothing is loaded)."""

    def __init__(self, sampler: Any, skip: int) -> None:
        self.sampler = sampler
        self.skip = skip

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)


class _SkipDataLoader(DataLoader[Any]):
    """A DataLoader over an IterableDataset that drops its first ``skip_batches`` batches (they are loaded)."""

    def __init__(self, *args: Any, skip_batches: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.skip_batches = skip_batches

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        return itertools.islice(super().__iter__(), self.skip_batches, None)

    def __len__(self) -> int:
        return max(0, super().__len__() - self.skip_batches)


def skip_first_batches(dataloader: Any, num_batches: int = 0) -> Any:
    """Start the epoch at its batch ``num_batches``, counted from the epoch's start (this process's batches).

    A prepared loader is positioned and returned: its next ``iter()`` runs the epoch it would run anyway (the
    one ``load_state`` restored, else the next one) from batch ``num_batches``, without loading the batches
    before it. The position replaces one that ``load_state`` restored, never adds to it, so Accelerate's
    resume recipe (``load_state(...)`` then ``skip_first_batches(loader, resume_step)``) and ember's automatic
    resume yield the same batches. It is used once: the iteration after it runs a whole new epoch.

    Compute ``resume_step`` with ``loader.batches_per_epoch``: after ``load_state``, ``len(loader)`` counts
    what is left of the restored epoch, not the epoch's length.

    An unprepared DataLoader gives a new DataLoader that skips its first ``num_batches`` batches whenever it
    is iterated (a map-style dataset's are skipped in its batch sampler; an IterableDataset's are loaded and
    dropped).

    >>> from ember import Accelerator
    >>> accelerator = Accelerator(cpu=True, verbose=False)
    >>> loader = accelerator.prepare(DataLoader(torch.arange(10), batch_size=2))
    >>> [b.tolist() for b in skip_first_batches(loader, 3)]
    [[6, 7], [8, 9]]
    >>> len(loader), [b.tolist() for b in loader][:2]  # the next epoch is whole again
    (5, [[0, 1], [2, 3]])
    """
    skip = _count(num_batches, "skip_first_batches", "num_batches")
    if isinstance(dataloader, DeviceLoader):
        epoch, _ = dataloader._next_start()
        per_epoch = None if isinstance(dataloader.dataset, IterableDataset) else dataloader.batches_per_epoch
        if per_epoch is not None and skip > per_epoch:
            raise EmberConfigError(
                f"skip_first_batches(num_batches={skip}): an epoch of this loader has {per_epoch} batches on this "
                "process. Pass the batches consumed within the epoch, e.g. resume_step % loader.batches_per_epoch."
            )
        dataloader.seek(epoch, skip)
        return dataloader
    if not isinstance(dataloader, DataLoader):
        raise EmberConfigError(
            f"skip_first_batches(dataloader=...) got {type(dataloader).__name__}; pass a torch DataLoader or a "
            "loader returned by Accelerator.prepare."
        )
    kwargs = _loader_kwargs(dataloader)
    if isinstance(dataloader.dataset, IterableDataset):
        return _SkipDataLoader(skip_batches=skip, **kwargs)
    for key in ("batch_size", "drop_last", "sampler"):
        kwargs.pop(key, None)
    if dataloader.batch_sampler is None:  # no automatic batching: the sampler yields the "batches"
        return DataLoader(sampler=_SkipFirst(dataloader.sampler, skip), batch_size=None, **kwargs)  # type: ignore[arg-type]
    return DataLoader(batch_sampler=_SkipFirst(dataloader.batch_sampler, skip), **kwargs)  # type: ignore[arg-type]


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


def _loader_kwargs(dataloader: DataLoader[Any]) -> dict[str, Any]:
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
        "generator": dataloader.generator,
    }
    if dataloader.num_workers > 0:
        kwargs["prefetch_factor"] = dataloader.prefetch_factor
        kwargs["multiprocessing_context"] = dataloader.multiprocessing_context
    if not isinstance(dataloader.dataset, IterableDataset):
        kwargs["sampler"] = dataloader.sampler
    return kwargs


def rebuild_dataloader(dataloader: DataLoader[Any], **overrides: Any) -> DataLoader[Any]:
    """Recreate ``dataloader`` with the same settings and some replaced (sampler, dataset, pin_memory)."""
    kwargs = _loader_kwargs(dataloader)
    kwargs.update(overrides)
    if "sampler" in overrides:
        kwargs["shuffle"] = False
    return DataLoader(**kwargs)


def dataset_length(dataloader: DataLoader[Any]) -> int | None:
    dataset = dataloader.dataset
    return len(dataset) if isinstance(dataset, Sized) else None
