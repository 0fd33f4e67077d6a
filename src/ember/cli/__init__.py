"""The ``ember`` command: ``ember launch | config | env | fit | validate | test | predict | report``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ember._errors import EmberConfigError

#: flag -> (type, help); the same names as Accelerate's ``accelerate launch`` / the YAML keys
_LAUNCH_FLAGS: dict[str, tuple[Any, str]] = {
    "num_processes": (int, "processes in all, over every machine (default 1)"),
    "num_machines": (int, "machines taking part (default 1); start `ember launch` on each"),
    "machine_rank": (int, "this machine's index, 0 .. num_machines-1 (default 0)"),
    "main_process_ip": (str, "address of machine 0 (needed with several machines)"),
    "main_process_port": (int, "port on machine 0 for the rendezvous (default 29500, or a free one alone)"),
    "mixed_precision": (str, "no | fp16 | bf16 (or ember's names: 16-mixed, bf16-mixed, bf16-true, ...)"),
    "distributed_type": (str, "NO | MULTI_CPU | MULTI_GPU | FSDP | DEEPSPEED (default: MULTI_GPU with GPUs)"),
    "strategy_name": (str, "any registered ember strategy, e.g. fsdp, deepspeed_stage_2 (wins over distributed_type)"),
    "max_restarts": (int, "restart the whole group up to N times when a process dies (default 0)"),
    "rdzv_backend": (str, "static (default) or c10d (elastic rendezvous through main_process_ip:port)"),
    "gradient_accumulation_steps": (int, "default Accelerator(gradient_accumulation_steps=...) of the script"),
    "monitor_interval": (float, "seconds between the launcher's checks of its processes (default 1.0)"),
    "gpu_ids": (str, "GPUs to use, 'all' or a list such as 0,1 (sets CUDA_VISIBLE_DEVICES for the workers)"),
    "dynamo_backend": (str, "torch.compile backend for the script's model, e.g. inductor (default: no)"),
    "dynamo_mode": (str, "torch.compile mode: default | reduce-overhead | max-autotune"),
}
_DYNAMO_FLAGS = ("dynamo_backend", "dynamo_mode")


def _add_launch_flags(p: argparse.ArgumentParser, config_help: str) -> None:
    p.add_argument("--config_file", default=None, help=config_help)
    for name, (kind, text) in _LAUNCH_FLAGS.items():
        p.add_argument(f"--{name}", type=kind, default=None, help=text)
    p.add_argument("--cpu", action="store_true",
                   help="run on CPU processes (gloo) even if GPUs are present; the default config file is not read")


def _config_from(ns: argparse.Namespace, source: Path | None) -> Any:
    from ember.cli.config import LaunchConfig

    cfg = LaunchConfig.from_file(source) if source is not None else LaunchConfig()
    for note in cfg.notes:
        print(f"[ember] {note}", file=sys.stderr)
    for name in _LAUNCH_FLAGS:
        value = getattr(ns, name)
        if value is None:
            continue
        if name in _DYNAMO_FLAGS:
            cfg.dynamo_config = {**cfg.dynamo_config, name: value}
        else:
            setattr(cfg, name, value)
    if ns.cpu:
        cfg.use_cpu = True
    if cfg.distributed_type == "MULTI_CPU" and not cfg.use_cpu and source is None:
        import torch

        if torch.cuda.is_available():
            cfg.distributed_type = "MULTI_GPU"
    cfg.validate("ember launch")
    return cfg


def _launch_source(ns: argparse.Namespace) -> Path | None:
    """``--config_file``, else the default config file written by ``ember config`` (not with ``--cpu``)."""
    from ember.cli.config import default_config_file

    if ns.config_file:
        return Path(ns.config_file)
    default = default_config_file()
    if ns.cpu or not default.is_file():
        return None
    print(f"[ember] launch: using the default config {default} (written by `ember config`; --config_file "
          "overrides it)", file=sys.stderr)
    return default


RUN_COMMANDS = ("fit", "validate", "test", "predict")  # parsed by ember.cli.fit (jsonargparse)


def _parser() -> argparse.ArgumentParser:
    from ember.cli.config import default_config_file

    parser = argparse.ArgumentParser(prog="ember", description="ember: launch, configure and inspect training jobs")
    sub = parser.add_subparsers(dest="command", required=True)
    p_launch = sub.add_parser("launch", help="run a script on several processes / machines",
                              description="Run a training script on several processes (torch.distributed.run). "
                              f"Settings: flags, over --config_file, over the default config {default_config_file()}.")
    _add_launch_flags(p_launch, "YAML written by `ember config` or Accelerate's config (default: the default "
                                f"config file, {default_config_file()}, when it exists)")
    p_launch.add_argument("script", help="the training script to run on every process")
    p_launch.add_argument("script_args", nargs=argparse.REMAINDER, help="arguments passed on to the script")
    p_config = sub.add_parser("config", help="write the default launch config from flags (no prompts)",
                              description="Write a launch YAML from flags; `ember launch` then reads it by default.")
    _add_launch_flags(p_config, f"where to write it (default: {default_config_file()}; set EMBER_HOME to move it)")
    p_config.add_argument("--output", "-o", default=None, help="same as --config_file")
    sub.add_parser("env", help="print versions and devices", description="Print versions and devices.")
    for name, text in (("fit", "train a model from a YAML config (LightningCLI-style, jsonargparse)"),
                       ("validate", "validate from a YAML config"), ("test", "test from a YAML config"),
                       ("predict", "predict from a YAML config"),
                       ("report", "turn run directories into one self-contained HTML page")):
        sub.add_parser(name, help=text, add_help=False)  # parsed by their own modules (see main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in RUN_COMMANDS:
        from ember.cli.fit import main as run_main

        return run_main(args[0], args[1:])
    if args and args[0] == "report":
        from ember.cli.report import main as report_main

        return report_main(args[1:])
    parser = _parser()
    ns = parser.parse_args(argv)
    try:
        if ns.command == "env":
            from ember.cli.env import report

            print(report())
            return 0
        if ns.command == "config":
            from ember.cli.config import default_config_file

            cfg = _config_from(ns, None)
            target = Path(ns.output or ns.config_file or default_config_file())
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(cfg.to_yaml())
            print(f"wrote {target}")
            return 0
        from ember.cli.launch import launch

        return launch(_config_from(ns, _launch_source(ns)), ns.script, ns.script_args)
    except EmberConfigError as err:
        print(f"ember {ns.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
