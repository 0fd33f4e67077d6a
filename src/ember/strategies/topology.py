"""Topology: one ``DeviceMesh`` with named dimensions, built here and nowhere else.

The dimensions, outermost first, are ``dp_replicate`` (replicas that all-reduce gradients, as DDP or the replicate
dimension of HSDP), ``dp_shard`` (ranks that shard parameters, as FSDP), ``cp`` (context parallel) and ``tp``
(tensor parallel). Their product is the world size. Data is sharded over the *data-parallel* ranks
(``dp_replicate × dp_shard``): ranks that differ only in ``cp``/``tp`` see the same batches. Metric reduction,
``gather_for_metrics`` and ``num_items`` normalisation use the same group.

>>> t = Topology.build(world_size=4, rank=3, dp_shard=2)
>>> t.shape, t.dp_size, t.dp_rank
({'dp_replicate': 2, 'dp_shard': 2, 'cp': 1, 'tp': 1}, 4, 3)
>>> Topology.build(world_size=4, rank=3, tp=2).dp_rank  # ranks 2 and 3 hold the same data
1
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ember._errors import EmberConfigError

DIMS = ("dp_replicate", "dp_shard", "cp", "tp")


@dataclass
class Topology:
    """Sizes of the named mesh dimensions and this rank's coordinates in them."""

    world_size: int = 1
    rank: int = 0
    dp_replicate: int = 1
    dp_shard: int = 1
    cp: int = 1
    tp: int = 1
    _mesh: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def build(
        cls, world_size: int, rank: int, *, dp_replicate: int | None = None, dp_shard: int = 1, cp: int = 1,
        tp: int = 1,
    ) -> Topology:
        """Sizes for ``world_size`` ranks; ``dp_replicate=None`` takes whatever the other dimensions leave."""
        for name, value in (("dp_shard", dp_shard), ("cp", cp), ("tp", tp)):
            if not isinstance(value, int) or value < 1:
                raise EmberConfigError(f"{name}={value!r} must be an integer >= 1.")
        inner = dp_shard * cp * tp
        if dp_replicate is None:
            if world_size % inner:
                raise EmberConfigError(
                    f"the mesh dp_shard={dp_shard} x cp={cp} x tp={tp} = {inner} does not divide the world size "
                    f"{world_size}. Choose sizes whose product divides the number of processes."
                )
            dp_replicate = world_size // inner
        if dp_replicate * inner != world_size:
            raise EmberConfigError(
                f"the mesh dp_replicate={dp_replicate} x dp_shard={dp_shard} x cp={cp} x tp={tp} = "
                f"{dp_replicate * inner} ranks, but the job has {world_size} processes. Make the product equal "
                "to the world size (or leave dp_replicate unset to fill it)."
            )
        return cls(world_size, rank, dp_replicate, dp_shard, cp, tp)

    @property
    def shape(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in DIMS}

    def coordinate(self, dim: str) -> int:
        """This rank's index along ``dim`` (row-major over :data:`DIMS`)."""
        sizes = [getattr(self, d) for d in DIMS]
        stride = math.prod(sizes[DIMS.index(dim) + 1 :])
        return int((self.rank // stride) % getattr(self, dim))

    @property
    def dp_size(self) -> int:
        """Ranks that see different data."""
        return self.dp_replicate * self.dp_shard

    @property
    def dp_rank(self) -> int:
        """This rank's index among the data-parallel ranks."""
        return self.coordinate("dp_replicate") * self.dp_shard + self.coordinate("dp_shard")

    @property
    def is_pure_dp(self) -> bool:
        """True when every rank is a data-parallel rank (no cp/tp): the data-parallel group is the whole world."""
        return self.cp == 1 and self.tp == 1

    def mesh(self, device_type: str) -> Any:
        """The ``DeviceMesh`` (built on first use; needs an initialised process group)."""
        if self._mesh is None:
            from torch.distributed.device_mesh import init_device_mesh

            dims = [d for d in DIMS if getattr(self, d) > 1] or ["dp_shard"]
            shape = tuple(getattr(self, d) for d in dims)
            self._mesh = init_device_mesh(device_type, shape, mesh_dim_names=tuple(dims))
        return self._mesh

    def dp_group(self, device_type: str) -> Any:
        """The data-parallel process group (None = the default group, when every rank is data parallel)."""
        if self.is_pure_dp or self.world_size == 1:
            return None
        mesh = self.mesh(device_type)
        names = [d for d in ("dp_replicate", "dp_shard") if getattr(self, d) > 1]
        if not names:
            return None
        sub = mesh[tuple(names)] if len(names) > 1 else mesh[names[0]]
        if len(names) > 1:
            sub = sub._flatten("dp")
        return sub.get_group()
