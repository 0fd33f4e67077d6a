"""``ember fit | validate | test | predict --config run.yaml``: the Trainer from a config file.

Built on ``jsonargparse`` (``pip install ember[cli]``), as LightningCLI is. A config names the model and data
classes by import path with their ``init_args``, and holds the Trainer's arguments, callbacks and loggers::

    model:
      class_path: bytegpt.ByteGPT          # any ember.Module subclass, importable from the working directory
      init_args: {n_layer: 2, learning_rate: 2.0e-3}
    data:
      class_path: bytegpt.StdlibData       # any object with train_dataloader() / val_dataloader() / ...
      init_args: {batch_size: 16}
    trainer:
      max_epochs: 3
      callbacks:
        - class_path: ember.callbacks.EarlyStopping
          init_args: {monitor: val_loss, patience: 2}
      logger:
        class_path: ember.loggers.CSVLogger
        init_args: {save_dir: runs/bytegpt}
    ckpt_path: null                        # a checkpoint dir, "last" or "best"

Command-line flags override the file (``--trainer.max_epochs 5``, ``--model.init_args.n_layer 4``);
``--print_config`` prints the resolved config and exits. A misspelt key gets "did you mean" and the valid
names. Only the classes the config or flags name are imported (the working directory is on the import path,
as with ``python -m``); values are parsed as YAML data and never evaluated as code.

``fit`` saves the resolved config as ``<trainer.default_root_dir>/config.yaml``. Resuming (``--ckpt_path
last``) compares the new config with the saved one and prints what differs; a fresh ``fit`` into a directory
whose saved config differs stops and says how to go on (resume, another directory, or ``--overwrite``).
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ember._errors import EmberConfigError
from ember.callbacks.base import Callback

if TYPE_CHECKING:
    from jsonargparse import ArgumentParser, Namespace

    from ember.trainer.module import Module
    from ember.trainer.trainer import Trainer

SUBCOMMANDS = ("fit", "validate", "test", "predict")
CONFIG_NAME = "config.yaml"
#: keys that may differ between a run and its resumption without changing the run
_RUN_KEYS = ("ckpt_path", "overwrite", "config", "print_config")


class DataModule(Protocol):
    """What ``data:`` must be: an object with (at least) ``train_dataloader()``; ``val_dataloader()``,
    ``test_dataloader()``, ``predict_dataloader()``, ``setup(stage)`` are used when present."""

    def train_dataloader(self) -> Any:
        """The training DataLoader."""


def _did_you_mean(name: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def _jsonargparse() -> Any:
    try:
        import jsonargparse
    except ImportError as err:
        raise EmberConfigError(
            "ember fit/validate/test/predict read configs with jsonargparse, which is not installed: "
            "pip install ember[cli]"
        ) from err
    return jsonargparse


def build_parser(subcommand: str) -> ArgumentParser:
    """The parser of ``ember <subcommand>``: ``--config``, ``trainer.*``, ``model``, ``data``, ``ckpt_path``."""
    ja = _jsonargparse()
    from ember.loggers import Logger
    from ember.trainer.module import Module
    from ember.trainer.trainer import Trainer

    parser: ArgumentParser = ja.ArgumentParser(
        prog=f"ember {subcommand}", exit_on_error=False, allow_abbrev=False, parser_mode="yaml",
        description=f"{subcommand.capitalize()} an ember.Module with ember.Trainer from a YAML config and flags.",
    )
    parser.add_argument("-c", "--config", action=ja.ActionConfigFile, help="a YAML config file (repeatable)")
    parser.add_class_arguments(Trainer, "trainer", skip={"callbacks", "logger"}, fail_untyped=False,
                               instantiate=False)
    parser.add_argument("--trainer.callbacks", type=list[Callback] | None, default=None,
                        help="callbacks: a list of {class_path, init_args}")
    parser.add_argument("--trainer.logger", type=bool | Logger | list[Logger], default=True,
                        help="true (TensorBoard, else CSV), false, a logger or a list of loggers")
    parser.add_subclass_arguments(Module, "model", required=True, help="the ember.Module: class_path + init_args")
    parser.add_argument("--data", type=DataModule | None, default=None,
                        help="the data module: class_path + init_args")
    parser.add_argument("--ckpt_path", type=str | None, default=None,
                        help="a checkpoint directory, 'last' or 'best'")
    if subcommand == "fit":
        parser.add_argument("--overwrite", type=bool, default=False,
                            help="replace a differing config.yaml saved by an earlier run in the same directory")
    return parser


# ----------------------------------------------------------------------------------------------------
# "did you mean" for flags and config keys
# ----------------------------------------------------------------------------------------------------
def _static_keys(parser: ArgumentParser) -> list[str]:
    keys = []
    for action in parser._actions:
        for option in action.option_strings:
            if option.startswith("--") and not option.endswith("+"):
                keys.append(option[2:])
    return keys


def check_flags(parser: ArgumentParser, argv: Sequence[str]) -> None:
    """Unknown ``--trainer.x`` / top-level flags fail with the closest valid name and the valid list."""
    keys = _static_keys(parser)
    trainer_keys = sorted(k.split(".", 1)[1] for k in keys if k.startswith("trainer.") and k.count(".") == 1)
    top = sorted({k.split(".")[0] for k in keys})
    for token in argv:
        if not token.startswith("--") or token == "--":
            continue
        name = token[2:].split("=", 1)[0].rstrip("+")
        head = name.split(".")[0]
        if head not in top:
            raise EmberConfigError(f"unknown option --{name}.{_did_you_mean(head, top)} Valid: "
                                   + ", ".join(f"--{k}" for k in top) + ".")
        if head == "trainer" and name.count(".") == 1 and name.split(".")[1] not in trainer_keys:
            key = name.split(".")[1]
            raise EmberConfigError(f"unknown Trainer argument --trainer.{key}.{_did_you_mean(key, trainer_keys)} "
                                   f"Valid: {', '.join(trainer_keys)}.")


def _init_args_of(class_path: str) -> list[str]:
    """Parameter names of an already-imported class named in the config (never imports anything)."""
    import inspect

    module_name, _, name = class_path.rpartition(".")
    owner = sys.modules.get(module_name)
    cls = getattr(owner, name, None) if owner is not None else None
    if cls is None:
        return []
    params = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def explain(message: str, parser: ArgumentParser) -> str:
    """jsonargparse's message, with "did you mean" and the valid names for an unknown key."""
    group = re.search(r"Group '([\w.]+)' does not accept option '([\w.]+)'", message)
    if group:
        where, key = group.groups()
        valid = sorted(k.split(".", 1)[1] for k in _static_keys(parser)
                       if k.startswith(f"{where}.") and k.count(".") == 1)
        return f"{where}: unknown key {key!r}.{_did_you_mean(key, valid)} Valid: {', '.join(valid)}."
    option = re.search(r"Problem with given class_path '([\w.]+)':\s*Option '([\w.]+)' is not accepted", message)
    if option:
        class_path, key = option.groups()
        valid = _init_args_of(class_path)
        where = re.search(r'Parser key "([\w.]+)"', message)
        prefix = f"{where.group(1)}: " if where else ""
        return (f"{prefix}{class_path} has no init argument {key!r}.{_did_you_mean(key, valid)} "
                f"Valid: {', '.join(valid) or '(none)'}.")
    unknown = re.search(r"Unrecognized arguments: (\S+)", message)
    if unknown:
        return f"unrecognized argument {unknown.group(1)} (see `--help` for the valid options)."
    return message.strip()


# ----------------------------------------------------------------------------------------------------
# the saved config
# ----------------------------------------------------------------------------------------------------
def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``"key: old → new"`` lines for every leaf that differs (run-only keys such as ckpt_path ignored).

    >>> config_differences({"trainer": {"max_epochs": 3}}, {"trainer": {"max_epochs": 5}})
    ['trainer.max_epochs: 3 → 5']
    """
    old, new = _flatten(saved), _flatten(current)
    lines = []
    for key in sorted(set(old) | set(new)):
        if key.split(".")[0] in _RUN_KEYS:
            continue
        missing = "(not set)"
        if old.get(key, missing) != new.get(key, missing):
            lines.append(f"{key}: {old.get(key, missing)} → {new.get(key, missing)}")
    return lines


class SaveConfig(Callback):
    """Writes the resolved config to ``<default_root_dir>/config.yaml`` at the start of ``fit`` (rank 0).

    Every rank compares it with a config saved there before, so all ranks agree on stopping or going on. Rank 0
    also notes the session in ``run_info.json`` (hardware, versions, wall time) for ``ember report``.
    """

    def __init__(self, text: str, resuming: bool, overwrite: bool) -> None:
        self.text, self.resuming, self.overwrite = text, resuming, overwrite

    def setup(self, trainer: Trainer, pl_module: Module, stage: str) -> None:
        if stage != "fit":
            return
        import yaml

        path = Path(trainer.default_root_dir) / CONFIG_NAME
        if path.is_file():
            diff = config_differences(yaml.safe_load(path.read_text()) or {}, yaml.safe_load(self.text) or {})
            if diff and not self.resuming and not self.overwrite:
                raise EmberConfigError(
                    f"{path} holds the config of an earlier run, and this one differs:\n  " + "\n  ".join(diff)
                    + "\nResume that run with --ckpt_path last, pick another --trainer.default_root_dir, or pass "
                    "--overwrite to replace the saved config."
                )
            if diff and trainer.is_global_zero:
                what = "resuming with a config that differs from" if self.resuming else "replacing"
                print(f"[ember] {what} the saved {path}:\n  " + "\n  ".join(diff), flush=True)
            elif self.resuming and trainer.is_global_zero:
                print(f"[ember] resuming with the same config as the saved {path}", flush=True)
        if trainer.is_global_zero:
            from ember.cli.report import record_run

            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(self.text)
            os.replace(tmp, path)
            record_run(trainer.default_root_dir, "start")

    def teardown(self, trainer: Trainer, pl_module: Module, stage: str) -> None:
        if stage == "fit" and trainer.is_global_zero:
            from ember.cli.report import record_run

            record_run(trainer.default_root_dir, "end")


# ----------------------------------------------------------------------------------------------------
# running
# ----------------------------------------------------------------------------------------------------
def _trainer(init: Namespace, extra: list[Callback]) -> Trainer:
    from ember.trainer.trainer import Trainer

    kwargs = dict(vars(init.trainer))
    callbacks = list(kwargs.pop("callbacks", None) or [])
    return Trainer(**kwargs, callbacks=[*callbacks, *extra])


def run(subcommand: str, argv: Sequence[str]) -> int:
    """Parse, check, instantiate and run ``subcommand``; returns the exit status."""
    if subcommand not in SUBCOMMANDS:
        raise EmberConfigError(f"unknown subcommand {subcommand!r}.{_did_you_mean(subcommand, SUBCOMMANDS)}")
    if os.getcwd() not in sys.path:  # class paths resolve from the working directory, as with `python -m`
        sys.path.insert(0, os.getcwd())
    parser = build_parser(subcommand)
    check_flags(parser, argv)
    try:
        cfg = parser.parse_args(list(argv))
    except SystemExit as done:  # --help, --print_config
        return int(done.code or 0) if not isinstance(done.code, str) else 2
    except Exception as err:  # jsonargparse raises ArgumentError (exit_on_error=False)
        if type(err).__name__ not in ("ArgumentError", "NSKeyError", "TypeError", "ValueError"):
            raise
        raise EmberConfigError(explain(str(err), parser)) from None
    init = parser.instantiate(cfg)
    extra: list[Callback] = []
    if subcommand == "fit":
        text = parser.dump(cfg, skip_none=False)
        extra.append(SaveConfig(text, resuming=cfg.ckpt_path is not None, overwrite=bool(cfg.overwrite)))
    trainer = _trainer(init, extra)
    model, data = init.model, init.data
    if subcommand == "fit":
        trainer.fit(model, datamodule=data, ckpt_path=cfg.ckpt_path)
    elif subcommand in ("validate", "test"):
        getattr(trainer, subcommand)(model, datamodule=data, ckpt_path=cfg.ckpt_path)
    else:
        predictions = trainer.predict(model, datamodule=data, ckpt_path=cfg.ckpt_path) or []
        if trainer.is_global_zero:
            print(f"[ember] predict: {len(predictions)} batches of predictions")
    return 0


def main(subcommand: str, argv: Sequence[str]) -> int:
    """Entry point of ``ember fit|validate|test|predict``: config errors print one message and return 2."""
    try:
        return run(subcommand, argv)
    except EmberConfigError as err:
        print(f"ember {subcommand}: error: {err}", file=sys.stderr)
        return 2
