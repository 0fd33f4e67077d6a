"""``Trainer(devices=N)``: join the processes ``ember launch``/torchrun started, or start them.

When the script runs as one plain process and asks for N > 1 devices, the first ``fit``/``validate``/
``test``/``predict`` call turns this process into the launcher: it re-runs the same script with the same
arguments on N processes through :func:`ember.cli.launch.launch` (``torch.distributed.run`` in-process, the
path ``ember launch`` takes), waits for them, and exits with their exit code. Nothing after that call runs in
the launcher; the workers run the whole script and join at the same call.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import NoReturn

import torch

from ember._env import ProcessInfo
from ember._errors import EmberConfigError
from ember._log import info as _log_info


def parse_devices(devices: int | str | Sequence[int], accelerator: str) -> int | None:
    """Number of devices per node (None for "auto" on CPU/when launched: decided by the environment)."""
    if isinstance(devices, str):
        text = devices.strip().lower()
        if text == "auto":
            return None
        if text.lstrip("-").isdigit():
            devices = int(text)
        else:
            ids = [p for p in text.split(",") if p.strip()]
            if not all(p.strip().isdigit() for p in ids):
                raise EmberConfigError(f"devices={devices!r}: use an int, 'auto', -1 or a list of GPU indices.")
            devices = [int(p) for p in ids]
    if isinstance(devices, (list, tuple)):
        if list(devices) != list(range(len(devices))):
            raise EmberConfigError(
                f"devices={devices!r}: ember uses the first N devices; select GPUs with CUDA_VISIBLE_DEVICES "
                f"and pass devices={len(devices)}."
            )
        return len(devices)
    if isinstance(devices, bool) or not isinstance(devices, int):
        raise EmberConfigError(f"devices={devices!r}: use an int, 'auto', -1 or a list of GPU indices.")
    if devices == -1:
        if accelerator == "cpu" or not torch.cuda.is_available():
            raise EmberConfigError("devices=-1 means every GPU; on CPU give a number of processes, e.g. devices=2.")
        return torch.cuda.device_count()
    if devices < 1:
        raise EmberConfigError(f"devices={devices} must be >= 1 (or 'auto' / -1).")
    return devices


def check_devices(devices: int | None, accelerator: str) -> None:
    """GPUs asked for must exist: fail here, before any process is started."""
    if accelerator in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise EmberConfigError(
                f"accelerator={accelerator!r} asks for CUDA, but torch.cuda.is_available() is False. Use "
                "accelerator='cpu' (devices=N then starts N CPU processes), or install a CUDA build of torch."
            )
        if devices is not None and devices > torch.cuda.device_count():
            raise EmberConfigError(
                f"devices={devices} but this machine has {torch.cuda.device_count()} GPU(s). Use devices="
                f"{torch.cuda.device_count()} or fewer."
            )


def must_launch(devices: int | None, num_nodes: int, accelerator: str, env: Mapping[str, str] | None = None) -> bool:
    """True when this process must start the worker processes itself; checks a joined job's size."""
    env = os.environ if env is None else env
    info = ProcessInfo.from_env(env)
    if info.source != "single" or "WORLD_SIZE" in env:
        if devices is not None and info.local_world_size != devices:
            raise EmberConfigError(
                f"Trainer(devices={devices}) but this job was launched with {info.local_world_size} process(es) "
                f"per node (LOCAL_WORLD_SIZE). Pass devices={info.local_world_size} (or 'auto'), or launch "
                f"with --num_processes {devices * num_nodes}."
            )
        if devices is not None and info.world_size != devices * num_nodes:
            raise EmberConfigError(
                f"Trainer(devices={devices}, num_nodes={num_nodes}) expects {devices * num_nodes} processes, but "
                f"the job has WORLD_SIZE={info.world_size}. Match num_nodes to the number of machines."
            )
        return False
    if devices is None:
        devices = auto_devices(accelerator)
    if num_nodes > 1:
        raise EmberConfigError(
            f"num_nodes={num_nodes}: start the job on every machine with `ember launch --num_machines "
            f"{num_nodes} --num_processes {devices * num_nodes} ...` (or torchrun); the Trainer then joins it."
        )
    return devices > 1


def auto_devices(accelerator: str) -> int:
    use_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return torch.cuda.device_count() if use_gpu else 1


def _is_test_runner(script: str) -> bool:
    """pytest (or another runner) re-run on N processes would run the whole test session N times."""
    name, parent = os.path.basename(script), os.path.basename(os.path.dirname(script))
    return name.startswith(("pytest", "py.test")) or (name == "__main__.py" and parent in ("pytest", "_pytest"))


def relaunch(devices: int, accelerator: str, argv: Sequence[str] | None = None) -> NoReturn:
    """Re-run this script on ``devices`` processes through ``ember launch``'s path, then exit with their code."""
    from ember.cli.config import LaunchConfig
    from ember.cli.launch import launch

    argv = list(sys.argv if argv is None else argv)
    script = argv[0] if argv else ""
    interactive = hasattr(sys, "ps1") or bool(sys.flags.interactive)
    if interactive or _is_test_runner(script) or not script or not os.path.isfile(script):
        raise EmberConfigError(
            f"Trainer(devices={devices}) starts {devices} processes by re-running your script, but this process "
            f"was not started from a script file (argv[0]={script!r}). Put the code in a script and run "
            f"`python script.py`, or start it with `ember launch --num_processes {devices} script.py`."
        )
    use_cpu = accelerator == "cpu" or not torch.cuda.is_available()
    cfg = LaunchConfig(
        distributed_type="MULTI_CPU" if use_cpu else "MULTI_GPU",
        num_processes=devices,
        use_cpu=use_cpu,
        monitor_interval=0.1,
    )
    _log_info(f"Trainer(devices={devices}): starting {devices} processes running {script}")
    sys.stdout.flush()
    code = launch(cfg, script, argv[1:])
    raise SystemExit(code)
