"""Checks made before ``prepare`` touches anything, and the dataloader half of ``prepare``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader

from ember._errors import EmberConfigError
from ember.data import (
    SHARD_AXES,
    DeviceLoader,
    IterableShard,
    ResumableSampler,
    dataset_length,
    rebuild_dataloader,
    sampler_kind,
    splits_itself,
)

if TYPE_CHECKING:
    from ember.accelerator import Accelerator


class DataPreparer:
    """Shards a DataLoader across ranks with a resumable sampler and wraps it in a DeviceLoader.

    Map-style datasets get a :class:`~ember.data.ResumableSampler`; an IterableDataset is split by whatever
    it does not split itself (rank, DataLoader worker: see :func:`~ember.data.splits_itself`). Every loader
    but one with a custom sampler gets a private generator, reseeded at each epoch from (seed, epoch, rank).
    """

    def __init__(self, accelerator: Accelerator) -> None:
        self.acc = accelerator
        self._sampler_seed: int | None = None

    def sampler_seed(self) -> int:
        if self._sampler_seed is None:
            seed = self.acc.seed
            if seed is None:  # one draw, agreed by all ranks, so unseeded runs still differ from each other
                drawn = torch.randint(0, 2**31 - 1, (1,), generator=torch.Generator().manual_seed(torch.initial_seed() % 2**62))
                seed = int(self.acc.strategy.broadcast(drawn.to(self.acc.device), 0).item())
            self._sampler_seed = seed
        return self._sampler_seed

    def saved_seed(self) -> int | None:
        """The sampler seed to save with a checkpoint (None until a loader needed one)."""
        return self._sampler_seed

    def restore_seed(self, seed: int, loaders: list[DeviceLoader]) -> None:
        """Use the checkpoint's sampler seed for ``loaders`` and every loader prepared later."""
        self._sampler_seed = seed
        for loader in loaders:
            if loader.seed is not None:
                loader.set_seed(seed)

    def _dp_rank_and_size(self) -> tuple[int, int]:
        """This process's rank among the processes the data is split across, and their number (the one place
        that says which processes share the data: the data-parallel ranks of the strategy's mesh)."""
        topology = self.acc.strategy.topology
        return topology.dp_rank, topology.dp_size

    def prepare(self, dataloader: DataLoader[Any], device_placement: bool, notes: list[str]) -> DeviceLoader:
        acc = self.acc
        rank, world = self._dp_rank_and_size()
        kind = sampler_kind(dataloader)
        sampler: ResumableSampler | None = None
        overrides: dict[str, Any] = {}
        num_padded = 0
        if kind in ("random", "sequential"):
            length = dataset_length(dataloader)
            assert length is not None
            sampler = ResumableSampler(
                length,
                batch_size=dataloader.batch_size or 1,
                num_replicas=world,
                rank=rank,
                shuffle=kind == "random",
                seed=self.sampler_seed(),
                even_batches=acc.even_batches,
                drop_last=dataloader.drop_last,
            )
            overrides["sampler"] = sampler
            num_padded = sampler.num_padded
            shards = f", {world} shards" if world > 1 else ""
            notes.append(f"dataloader sampler → ResumableSampler(shuffle={kind == 'random'}{shards})")
        elif kind == "iterable":
            shard = _iterable_shard(dataloader, rank, world, notes)
            if shard is not None:
                overrides["dataset"] = shard
        elif world > 1:
            raise EmberConfigError(
                f"prepare() cannot shard a DataLoader with a custom sampler/batch_sampler "
                f"({type(dataloader.sampler).__name__}) across {world} processes. Use shuffle=True/False, or "
                "shard inside your sampler by rank and pass it to a DataLoader you do not prepare."
            )
        if acc.device.type == "cuda" and device_placement and not dataloader.pin_memory:
            overrides["pin_memory"] = True
            notes.append("pin_memory=True for asynchronous copies")
        seed: int | None = None
        if kind == "custom":
            loader = dataloader  # one process: the user's own sampler is used as it is
        else:  # a private generator, reseeded per epoch: iterators never draw from the global RNG (exact resume)
            seed = self.sampler_seed()
            overrides["generator"] = torch.Generator()
            loader = rebuild_dataloader(dataloader, **overrides)
            if dataloader.num_workers > 0:
                notes.append("DataLoader workers seeded from (seed, epoch, rank)")
        if device_placement:
            notes.append(f"batches moved to {acc.device}")
        return DeviceLoader(
            loader,
            acc.device,
            on_batch=self._on_batch_factory(num_padded),
            convert=acc.precision.convert_input if acc.precision.param_dtype is not None else None,
            sampler=sampler,
            device_placement=device_placement,
            num_padded=num_padded,
            seed=seed,
            rank=rank,
        )

    def _on_batch_factory(self, num_padded: int) -> Any:
        state = self.acc.gradient_state

        def on_batch(last: bool | None) -> None:  # None: the loader finished its epoch
            state.end_of_dataloader = bool(last)
            state.padding_in_batch = num_padded if last else 0

        return on_batch


def _iterable_shard(dataloader: DataLoader[Any], rank: int, world: int, notes: list[str]) -> IterableShard | None:
    """Split an IterableDataset once, by what it does not split itself (every item read by one worker of one
    rank), and say which in the notes."""
    itself = splits_itself(dataloader.dataset)
    workers = dataloader.num_workers
    by_rank, by_worker = world > 1 and "rank" not in itself, workers > 1 and "worker" not in itself
    own = " and ".join(f"{axis}s" for axis in SHARD_AXES if axis in itself)
    own_note = f" (it splits itself across {own})" if own else ""
    if not (by_rank or by_worker):
        if world > 1 or workers > 1:
            notes.append(f"IterableDataset not sharded: it splits itself across {own}")
        return None
    if by_rank and by_worker:
        notes.append(f"IterableDataset sharded by (rank, worker) into {world}x{workers} interleaved shards")
    elif by_rank:
        notes.append(f"IterableDataset sharded by rank into {world} interleaved shards{own_note}")
    else:
        notes.append(f"IterableDataset sharded by worker into {workers} interleaved shards{own_note}")
    return IterableShard(
        dataloader.dataset,  # type: ignore[arg-type]
        rank if by_rank else 0, world if by_rank else 1, split_workers=by_worker, num_workers=workers,
    )
