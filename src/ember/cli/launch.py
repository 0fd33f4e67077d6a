"""``ember launch``: start a script on N processes (and M machines) through ``torch.distributed.run``.

The elastic agent of torch does the work (rendezvous, restarts with ``--max_restarts``, signal forwarding);
ember only turns its configuration into torchrun arguments and environment variables: ``EMBER_MIXED_PRECISION``,
``EMBER_STRATEGY``, ``EMBER_ACCELERATOR`` (``cpu``), ``EMBER_GRADIENT_ACCUMULATION_STEPS``, ``EMBER_DYNAMO_CONFIG``
(JSON: ``{"backend", "mode", "fullgraph", "dynamic", "regional"}``, the ``torch.compile`` settings of the YAML's
``dynamo_config``) and ``CUDA_VISIBLE_DEVICES`` (from ``gpu_ids``).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Sequence

import torch

from ember._errors import EmberConfigError
from ember.cli.config import DYNAMO_ENV, LaunchConfig


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def check_resources(cfg: LaunchConfig) -> None:
    """Fail before starting anything if this machine cannot hold the processes asked for."""
    per_node = cfg.num_processes // cfg.num_machines
    wants_gpu = cfg.distributed_type == "MULTI_GPU" or (not cfg.use_cpu and torch.cuda.is_available())
    if cfg.distributed_type == "MULTI_GPU" and not torch.cuda.is_available():
        raise EmberConfigError(
            "distributed_type=MULTI_GPU asks for CUDA, but torch.cuda.is_available() is False. "
            "Use distributed_type: MULTI_CPU (or --cpu)."
        )
    if cfg.gpu_ids not in (None, "all") and not cfg.use_cpu and torch.cuda.is_available():
        ids = [int(i) for i in str(cfg.gpu_ids).split(",")]
        missing = [i for i in ids if i >= torch.cuda.device_count()]
        if missing:
            raise EmberConfigError(
                f"gpu_ids={cfg.gpu_ids!r} names GPU(s) {missing}, but this machine has {torch.cuda.device_count()} "
                f"(indices 0..{torch.cuda.device_count() - 1})."
            )
        if cfg.distributed_type == "MULTI_GPU" and per_node > len(ids):
            raise EmberConfigError(
                f"--num_processes={cfg.num_processes} is {per_node} per machine, but gpu_ids={cfg.gpu_ids!r} gives "
                f"{len(ids)} GPU(s). List more gpu_ids or start fewer processes."
            )
    elif wants_gpu and not cfg.use_cpu and per_node > torch.cuda.device_count():
        raise EmberConfigError(
            f"--num_processes={cfg.num_processes} over {cfg.num_machines} machine(s) is {per_node} per machine, "
            f"but this machine has {torch.cuda.device_count()} GPU(s). Use --num_processes "
            f"{torch.cuda.device_count() * cfg.num_machines} or fewer, or --cpu."
        )


def torchrun_args(cfg: LaunchConfig, script: str, script_args: Sequence[str]) -> list[str]:
    per_node = cfg.num_processes // cfg.num_machines
    args = [f"--nnodes={cfg.num_machines}", f"--nproc_per_node={per_node}", f"--max_restarts={cfg.max_restarts}",
            f"--monitor_interval={cfg.monitor_interval}"]
    if cfg.num_machines == 1 and cfg.main_process_ip is None:
        args.append("--standalone")
    elif cfg.rdzv_backend == "c10d":
        args += ["--rdzv_backend=c10d", f"--rdzv_endpoint={cfg.main_process_ip}:{cfg.main_process_port or 29500}",
                 "--rdzv_id=ember"]
    else:
        args += [f"--node_rank={cfg.machine_rank}", f"--master_addr={cfg.main_process_ip}",
                 f"--master_port={cfg.main_process_port or 29500}"]
    return [*args, script, *script_args]


def job_exit_code(codes: Sequence[int]) -> int:
    """The exit status of a failed job from its ranks' codes: ``ember.faults.PREEMPTED_EXIT_CODE`` if any rank
    stopped on a preemption (the others were then stopped by the agent), else the first rank's, with a death by
    signal N reported as 128 + N like a shell does.

    >>> job_exit_code([-15, 75]), job_exit_code([-9, 1])
    (75, 137)
    """
    from ember.faults import PREEMPTED_EXIT_CODE

    if PREEMPTED_EXIT_CODE in codes:
        return PREEMPTED_EXIT_CODE
    code = codes[0] if codes else 1
    return 128 - code if code < 0 else (code or 1)


def signal_exit_code(signum: int) -> int:
    """The exit status when the launcher itself was signalled (and forwarded the signal to the workers): a
    preemption signal (SIGTERM, SIGUSR1) gives ``PREEMPTED_EXIT_CODE`` (rerun to continue), others 128 + N.

    >>> import signal
    >>> signal_exit_code(signal.SIGUSR1), signal_exit_code(signal.SIGINT)
    (75, 130)
    """
    import signal

    from ember.faults import PREEMPTED_EXIT_CODE

    return PREEMPTED_EXIT_CODE if signum in (signal.SIGTERM, signal.SIGUSR1) else 128 + signum


def launch(cfg: LaunchConfig, script: str, script_args: Sequence[str]) -> int:
    """Run ``script`` under torch's elastic agent; returns the job's exit code."""
    from torch.distributed import run as torchrun

    cfg.validate("ember launch")
    if not os.path.isfile(script):
        raise EmberConfigError(f"the script {script!r} does not exist (looked in {os.getcwd()}).")
    check_resources(cfg)
    os.environ["EMBER_MIXED_PRECISION"] = cfg.mixed_precision
    os.environ["EMBER_STRATEGY"] = cfg.strategy
    section = cfg.strategy_config()
    if section:
        os.environ["EMBER_STRATEGY_CONFIG"] = json.dumps(section)
    else:
        os.environ.pop("EMBER_STRATEGY_CONFIG", None)
    if cfg.use_cpu:
        os.environ["EMBER_ACCELERATOR"] = "cpu"
    if cfg.gradient_accumulation_steps:
        os.environ["EMBER_GRADIENT_ACCUMULATION_STEPS"] = str(cfg.gradient_accumulation_steps)
    if cfg.gpu_ids not in (None, "all") and not cfg.use_cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(cfg.gpu_ids)  # the workers see only these GPUs
    dynamo = cfg.dynamo_env()
    if dynamo is not None:  # the workers' Accelerator compiles the model with these settings
        os.environ[DYNAMO_ENV] = dynamo
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, cfg.num_processes))))
    # The script's own arguments are set after parsing: argparse would otherwise read a script flag that
    # abbreviates a torchrun option (e.g. --signal for --signals-to-handle) as torchrun's.
    args = torchrun.get_args_parser().parse_args(torchrun_args(cfg, script, []))
    args.training_script_args = list(script_args)
    if "SIGUSR1" not in str(getattr(args, "signals_to_handle", "SIGUSR1")):  # SLURM's pre-preemption signal
        args.signals_to_handle = f"{args.signals_to_handle},SIGUSR1"
    try:
        torchrun.run(args)  # type: ignore[no-untyped-call,unused-ignore]
    except Exception as err:  # ChildFailedError: torch already printed which rank failed and why
        failures = getattr(err, "failures", None)
        if failures:
            return job_exit_code([int(getattr(f, "exitcode", 1)) for f in failures.values()])
        sigval = getattr(err, "sigval", None)  # SignalException: the agent got a signal and forwarded it
        if sigval is not None:
            return signal_exit_code(int(sigval))
        raise
    return 0
