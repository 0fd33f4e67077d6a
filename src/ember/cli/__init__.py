"""The ``ember`` command: ``ember launch | config | env | fit | validate | test | predict | report``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ember._errors import EmberConfigError

_LAUNCH_FLAGS: dict[str, Any] = {
    "num_processes": int, "num_machines": int, "machine_rank": int, "main_process_ip": str,
    "main_process_port": int, "mixed_precision": str, "distributed_type": str, "max_restarts": int,
    "rdzv_backend": str, "gradient_accumulation_steps": int, "monitor_interval": float,
}


def _add_launch_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config_file", default=None, help="YAML written by `ember config` (Accelerate keys accepted)")
    for name, kind in _LAUNCH_FLAGS.items():
        p.add_argument(f"--{name}", type=kind, default=None)
    p.add_argument("--cpu", action="store_true", help="run on CPU even if GPUs are present (gloo)")


def _config_from(ns: argparse.Namespace) -> Any:
    from ember.cli.config import LaunchConfig

    cfg = LaunchConfig.from_file(ns.config_file) if ns.config_file else LaunchConfig()
    for name in _LAUNCH_FLAGS:
        value = getattr(ns, name)
        if value is not None:
            setattr(cfg, name, value)
    if ns.cpu:
        cfg.use_cpu = True
    if cfg.distributed_type == "MULTI_CPU" and not cfg.use_cpu and not ns.config_file:
        import torch

        if torch.cuda.is_available():
            cfg.distributed_type = "MULTI_GPU"
    cfg.validate("ember launch")
    return cfg


RUN_COMMANDS = ("fit", "validate", "test", "predict")  # parsed by ember.cli.fit (jsonargparse)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in RUN_COMMANDS:
        from ember.cli.fit import main as run_main

        return run_main(args[0], args[1:])
    if args and args[0] == "report":
        from ember.cli.report import main as report_main

        return report_main(args[1:])
    parser = argparse.ArgumentParser(prog="ember", description="ember: launch, configure and inspect training jobs")
    sub = parser.add_subparsers(dest="command", required=True)
    p_launch = sub.add_parser("launch", help="run a script on several processes / machines")
    _add_launch_flags(p_launch)
    p_launch.add_argument("script")
    p_launch.add_argument("script_args", nargs=argparse.REMAINDER)
    p_config = sub.add_parser("config", help="write a launch YAML from flags (no prompts)")
    _add_launch_flags(p_config)
    p_config.add_argument("--output", "-o", default="ember_config.yaml")
    sub.add_parser("env", help="print versions and devices")
    for name in (*RUN_COMMANDS, "report"):  # parsed by their own modules (see above); listed here for --help
        sub.add_parser(name, add_help=False)
    ns = parser.parse_args(argv)
    try:
        if ns.command == "env":
            from ember.cli.env import report

            print(report())
            return 0
        if ns.command == "config":
            cfg = _config_from(ns)
            Path(ns.output).write_text(cfg.to_yaml())
            print(f"wrote {ns.output}")
            return 0
        from ember.cli.launch import launch

        return launch(_config_from(ns), ns.script, ns.script_args)
    except EmberConfigError as err:
        print(f"ember {ns.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
