"""Starting and closing the default process group: shared by every multi-process strategy."""

from __future__ import annotations

import atexit
import datetime
import gc
import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from ember._env import ProcessInfo
from ember._errors import EmberConfigError


def _restart_store(process: ProcessInfo, timeout: datetime.timedelta) -> Any:
    """After an elastic restart (``ember launch --max_restarts``), a store whose keys belong to this attempt.

    torch's agent keeps one store for the whole job; the new workers would otherwise find the previous attempt's
    gloo/NCCL addresses in it and connect to a dead peer. None (the usual ``env://`` setup) on a first attempt.
    """
    if process.restart_count == 0 or not process.agent_store or process.master_addr is None:
        return None
    store = dist.TCPStore(  # type: ignore[attr-defined,unused-ignore]
        process.master_addr, int(process.master_port or 29500), process.world_size, is_master=False, timeout=timeout
    )
    return dist.PrefixStore(f"ember/restart-{process.restart_count}", store)  # type: ignore[attr-defined,unused-ignore]


def init_process_group(
    process: ProcessInfo, device: torch.device, timeout: datetime.timedelta, backend: str | None, strategy: str
) -> bool:
    """Start the default group for ``process`` (NCCL on GPUs, gloo on CPUs); False if one already exists."""
    if dist.is_initialized():
        return False
    if process.world_size > 1 and (process.master_addr is None or process.master_port is None):
        raise EmberConfigError(
            f"strategy={strategy!r} with world size {process.world_size} needs MASTER_ADDR and MASTER_PORT in the "
            "environment. Start the script with `ember launch` or `torchrun` (or `srun` under SLURM), which set them."
        )
    if device.type == "cuda":
        torch.cuda.set_device(device)
    kwargs: dict[str, Any] = {}
    store = _restart_store(process, timeout)
    if store is not None:
        kwargs["store"] = store
    elif process.source == "single":  # one process that still needs a group (e.g. FSDP on one GPU)
        kwargs["store"] = dist.HashStore()  # type: ignore[attr-defined,unused-ignore]
    elif process.source == "slurm":  # `srun python train.py`: rank 0 hosts the store at the derived address
        kwargs["init_method"] = f"tcp://{process.master_addr}:{process.master_port}"
    # torchrun / ember launch: env:// (the default) joins the agent's store
    dist.init_process_group(
        backend=backend or ("nccl" if device.type == "cuda" else "gloo"),
        rank=process.rank,
        world_size=process.world_size,
        timeout=timeout,
        device_id=device if device.type == "cuda" else None,
        **kwargs,
    )
    return True


def close_at_exit(owner: object, close: Callable[[Any], None]) -> None:
    """Call ``close(owner)`` at interpreter exit if ``owner`` is still alive (a script without end_training())."""
    ref = weakref.ref(owner)

    def _close() -> None:
        obj = ref()
        if obj is not None:
            close(obj)

    atexit.register(_close)


#: every DistributedDataParallel wrapper made in this process (weakly held): they all depend on the default group,
#: whichever strategy made them, so the group is closed only after their reducers are released
_DDP_WRAPPERS: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()


def track_ddp(wrapper: torch.nn.Module) -> None:
    _DDP_WRAPPERS.add(wrapper)


def release_ddp_reducers() -> None:
    """Drop the reducers of every live DDP wrapper: a reducer that outlives its gloo process group can abort the
    interpreter at exit ("terminate called without an active exception")."""
    for ddp in list(_DDP_WRAPPERS):
        ddp.__dict__.pop("reducer", None)
        ddp.__dict__.pop("logger", None)
    _DDP_WRAPPERS.clear()


def destroy_process_group() -> None:
    release_ddp_reducers()
    if dist.is_initialized():
        gc.collect()  # anything else that held the group (a dropped DDP, a DeviceMesh) goes before it
        dist.destroy_process_group()
