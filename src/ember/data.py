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
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, RandomSampler, SequentialSampler

from ember._errors import EmberConfigError
from ember._sampling import SHARD_AXES, IterableShard, ResumableSampler, splits_itself

__all__ = [
    "SHARD_AXES", "DeviceLoader", "IterableShard", "LoaderState", "ResumableSampler", "SkippedLoader", "apply_to_tensors", "epoch_seed",
    "find_batch_size", "move_to_device", "skip_first_batches", "splits_itself",
]


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
    continues that epoch at that batch, once. ``len(loader)`` is a whole epoch's batches, as PyTorch's and
    Accelerate's (the arithmetic of Accelerate's resume recipes depends on it); :attr:`batches_left` is the
    number the next ``iter()`` yields, which differs only in an epoch resumed by ``load_state``. ``state`` is
    where the loader is (checkpoints save it).

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
        """Batches of a whole epoch on this process, as a PyTorch DataLoader's (also after ``load_state``, so
        Accelerate's ``resume_step // len(loader)`` arithmetic holds); :attr:`batches_left` is what the next
        ``iter()`` yields."""
        return self.batches_per_epoch

    @property
    def batches_left(self) -> int:
        """Batches the next ``iter()`` yields: a whole epoch, or the rest of one resumed by ``load_state``.

        >>> from ember import Accelerator
        >>> loader = Accelerator(cpu=True, verbose=False).prepare(DataLoader(torch.arange(10), batch_size=2))
        >>> loader.seek(0, 3)  # what load_state does with a saved position
        >>> len(loader), loader.batches_left, len([b for b in loader])
        (5, 2, 2)
        """
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


class SkippedLoader:
    """What :func:`skip_first_batches` returns for a prepared loader: iterating it runs the loader from the
    batch just set, and ``len()`` counts the batches left of that epoch, as Accelerate's skipped loader does.
    Everything else (``state``, ``set_epoch``, ...) is the prepared loader's, which ``save_state`` records."""

    def __init__(self, prepared: DeviceLoader) -> None:
        self.prepared = prepared

    def __iter__(self) -> Iterator[Any]:
        return iter(self.prepared)

    def __len__(self) -> int:
        return self.prepared.batches_left

    def __getattr__(self, name: str) -> Any:
        return getattr(self.prepared, name)


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

    A prepared loader is positioned: its next ``iter()`` runs the epoch it would run anyway (the one
    ``load_state`` restored, else the next one) from batch ``num_batches``, without loading the batches before
    it; the :class:`SkippedLoader` returned iterates it and has the rest of that epoch as its ``len()``. The
    position replaces one that ``load_state`` restored, never adds to it, so Accelerate's resume recipe
    (``load_state(...)``, ``starting_epoch = resume_step // len(loader)``, then ``skip_first_batches(loader,
    resume_step % len(loader))``) and ember's automatic resume yield the same batches. It is used once: the
    iteration after it runs a whole new epoch.

    An unprepared DataLoader gives a new DataLoader that skips its first ``num_batches`` batches whenever it
    is iterated (a map-style dataset's are skipped in its batch sampler; an IterableDataset's are loaded and
    dropped).

    >>> from ember import Accelerator
    >>> accelerator = Accelerator(cpu=True, verbose=False)
    >>> loader = accelerator.prepare(DataLoader(torch.arange(10), batch_size=2))
    >>> skipped = skip_first_batches(loader, 3)
    >>> len(skipped), [b.tolist() for b in skipped]
    (2, [[6, 7], [8, 9]])
    >>> len(loader), [b.tolist() for b in loader][:2]  # the next epoch is whole again
    (5, [[0, 1], [2, 3]])
    """
    skip = _count(num_batches, "skip_first_batches", "num_batches")
    if isinstance(dataloader, SkippedLoader):
        dataloader = dataloader.prepared
    if isinstance(dataloader, DeviceLoader):
        epoch, _ = dataloader._next_start()
        per_epoch = None if isinstance(dataloader.dataset, IterableDataset) else dataloader.batches_per_epoch
        if per_epoch is not None and skip > per_epoch:
            raise EmberConfigError(
                f"skip_first_batches(num_batches={skip}): an epoch of this loader has {per_epoch} batches on this "
                "process. Pass the batches consumed within the epoch, e.g. resume_step % loader.batches_per_epoch."
            )
        dataloader.seek(epoch, skip)
        return SkippedLoader(dataloader)
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
