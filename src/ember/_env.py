"""The environment, read in one place: process facts and the settings ``ember launch`` hands to its workers.

torchrun / ``ember launch`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``GROUP_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``) and SLURM (``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``,
``SLURM_NODEID``, ``SLURM_JOB_NODELIST``, ``SLURM_JOB_ID``) are recognised. Under ``srun python train.py`` the
rendezvous address is the first host of the job's node list and the port is derived from the job id, as torchrun
users expect. ``ember launch`` passes its configuration to the workers through ``EMBER_*`` variables; they are read
by :meth:`LaunchSettings.from_env` and nowhere else. Nothing here is a global: callers read these objects once and
pass them on.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: variables ``ember launch`` sets for its workers (and nothing else reads)
LAUNCH_VARIABLES = (
    "EMBER_MIXED_PRECISION", "EMBER_STRATEGY", "EMBER_ACCELERATOR", "EMBER_GRADIENT_ACCUMULATION_STEPS",
    "EMBER_STRATEGY_CONFIG", "EMBER_DYNAMO_CONFIG",
)


@dataclass(frozen=True)
class ProcessInfo:
    """Where this process sits in the job, and how its ranks meet (``master_addr:master_port``)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    node_rank: int = 0
    source: str = "single"
    master_addr: str | None = None
    master_port: int | None = None
    #: elastic restarts (``ember launch --max_restarts``): which attempt this is, and whether the agent's store is used
    restart_count: int = 0
    agent_store: bool = False

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ProcessInfo:
        """Read the process facts from ``env`` (default: ``os.environ``).

        >>> ProcessInfo.from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}).rank
        1
        >>> info = ProcessInfo.from_env({"SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_JOB_ID": "4242",
        ...                              "SLURM_JOB_NODELIST": "gpu[07-08]"})
        >>> info.rank, info.master_addr, info.master_port
        (1, 'gpu07', 19242)
        """
        env = os.environ if env is None else env
        elastic: dict[str, Any] = {
            "restart_count": int(env.get("TORCHELASTIC_RESTART_COUNT", "0") or 0),
            "agent_store": env.get("TORCHELASTIC_USE_AGENT_STORE") == "True",
        }
        if "WORLD_SIZE" in env and "RANK" in env:
            world = int(env["WORLD_SIZE"])
            return cls(
                rank=int(env["RANK"]),
                world_size=world,
                local_rank=int(env.get("LOCAL_RANK", 0)),
                local_world_size=int(env.get("LOCAL_WORLD_SIZE", world)),
                node_rank=int(env.get("GROUP_RANK", env.get("NODE_RANK", 0))),
                source="torchrun",
                master_addr=env.get("MASTER_ADDR"),
                master_port=int(env["MASTER_PORT"]) if env.get("MASTER_PORT") else None,
                **elastic,
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
                master_addr=env.get("MASTER_ADDR") or slurm_main_host(env),
                master_port=int(env["MASTER_PORT"]) if env.get("MASTER_PORT") else slurm_port(env),
                **elastic,
            )
        return cls()


def slurm_main_host(env: Mapping[str, str]) -> str:
    """The first host of ``SLURM_JOB_NODELIST`` (``"gpu[07-08,11],cpu3"`` → ``"gpu07"``); 127.0.0.1 if unset.

    >>> slurm_main_host({"SLURM_JOB_NODELIST": "node[003-004]"}), slurm_main_host({})
    ('node003', '127.0.0.1')
    """
    nodes = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or ""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodes.strip())
    if match is None:
        return "127.0.0.1"
    prefix, ranges = match.group(1), match.group(2)
    if not ranges:
        return prefix
    return prefix + re.split(r"[-,]", ranges)[0]


def slurm_port(env: Mapping[str, str]) -> int:
    """A port every task of the job agrees on without talking: 15000 + the last 4 digits of the job id."""
    job = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID") or "0"
    digits = re.sub(r"\D", "", job)[-4:] or "0"
    return 15000 + int(digits)


@dataclass(frozen=True)
class LaunchSettings:
    """What ``ember launch`` (or ``Trainer(devices=N)``) asked the workers to use; explicit arguments win.

    >>> LaunchSettings.from_env({"EMBER_STRATEGY": "ddp", "EMBER_GRADIENT_ACCUMULATION_STEPS": "4"})
    LaunchSettings(mixed_precision=None, strategy='ddp', accelerator=None, gradient_accumulation_steps=4, \
strategy_config={}, dynamo_config={})
    """

    mixed_precision: str | None = None
    strategy: str | None = None
    accelerator: str | None = None
    gradient_accumulation_steps: int | None = None
    #: the YAML's section for the chosen strategy (``fsdp_config``, ``deepspeed_config``), see Strategy.configure
    strategy_config: dict[str, Any] = field(default_factory=dict)
    dynamo_config: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LaunchSettings:
        env = os.environ if env is None else env
        steps = env.get("EMBER_GRADIENT_ACCUMULATION_STEPS")
        return cls(
            mixed_precision=env.get("EMBER_MIXED_PRECISION") or None,
            strategy=env.get("EMBER_STRATEGY") or None,
            accelerator=env.get("EMBER_ACCELERATOR") or None,
            gradient_accumulation_steps=int(steps) if steps else None,
            strategy_config=_json_section(env, "EMBER_STRATEGY_CONFIG"),
            dynamo_config=_json_section(env, "EMBER_DYNAMO_CONFIG"),
        )


def _json_section(env: Mapping[str, str], name: str) -> dict[str, Any]:
    raw = env.get(name)
    if not raw:
        return {}
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError(f"{name} must hold a JSON object, got {raw!r}")
    return value


def default_config_file(env: Mapping[str, str] | None = None) -> Path:
    """Where ``ember config`` writes and ``ember launch`` reads the default config (``$EMBER_HOME``, else
    ``$XDG_CACHE_HOME/ember``, else ``~/.cache/ember``).

    >>> default_config_file({"EMBER_HOME": "/opt/ember"}).as_posix()
    '/opt/ember/default_config.yaml'
    >>> default_config_file({"XDG_CACHE_HOME": "/cache"}).as_posix()
    '/cache/ember/default_config.yaml'
    """
    env = os.environ if env is None else env
    home = env.get("EMBER_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "ember")
    return Path(os.path.expanduser(home)) / "default_config.yaml"
