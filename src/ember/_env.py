"""Process facts (rank, world size, local rank, node) read once from the environment, in one place.

torchrun / ``ember launch`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``GROUP_RANK``) and
SLURM (``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``, ``SLURM_NODEID``) are recognised. Nothing here is a
global: callers read a :class:`ProcessInfo` and pass it on.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class ProcessInfo:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    node_rank: int = 0
    source: str = "single"

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ProcessInfo:
        """Read the process facts from ``env`` (default: ``os.environ``).

        >>> ProcessInfo.from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}).rank
        1
        """
        env = os.environ if env is None else env
        if "WORLD_SIZE" in env and "RANK" in env:
            world = int(env["WORLD_SIZE"])
            local_world = int(env.get("LOCAL_WORLD_SIZE", world))
            return cls(
                rank=int(env["RANK"]),
                world_size=world,
                local_rank=int(env.get("LOCAL_RANK", 0)),
                local_world_size=local_world,
                node_rank=int(env.get("GROUP_RANK", env.get("NODE_RANK", 0))),
                source="torchrun",
            )
        if "SLURM_NTASKS" in env and "SLURM_PROCID" in env and int(env["SLURM_NTASKS"]) > 1:
            world = int(env["SLURM_NTASKS"])
            return cls(
                rank=int(env["SLURM_PROCID"]),
                world_size=world,
                local_rank=int(env.get("SLURM_LOCALID", 0)),
                local_world_size=int(str(env.get("SLURM_NTASKS_PER_NODE", world)).split("(")[0]),  # "2(x3)" too
                node_rank=int(env.get("SLURM_NODEID", 0)),
                source="slurm",
            )
        return cls()
