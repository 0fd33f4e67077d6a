"""Docstring examples are checks, not decoration (DESIGN.md rule 7): run them with the standard ``doctest``."""

from __future__ import annotations

import doctest
import importlib
import inspect
from pathlib import Path

import pytest

# module -> fewest examples (">>>" lines) it must run, so a dropped docstring example is noticed
MODULES = {
    "ember.accelerator": 40,
    "ember._stepping": 35,
    "ember._collectives": 15,
    "ember._state": 20,
    "ember._tracking": 8,
    "ember._kinds": 1,
    "ember._log": 1,
    "ember.strategies.topology": 3,
    "ember.strategies.registry": 2,
    "ember.strategies.single": 1,
    "ember._objects": 10,
    "ember._profile": 1,
    "ember.utils": 2,
    "ember.local_sgd": 1,
    "ember.strategies.fsdp": 1,
    "ember.strategies._fsdp_config": 2,
    "ember.checkpoint._sharded": 3,
    "ember.trainer.trainer": 35,
    "ember.trainer.module": 40,
    "ember.trainer._collate": 5,
    "ember._env": 4,
    "ember._handlers": 1,
    "ember._seed": 1,
    "ember.cli.config": 3,
    "ember.callbacks": 1,
    "ember.callbacks.early_stopping": 1,
    "ember.callbacks.gradient_accumulation_scheduler": 1,
    "ember.callbacks.lr_finder": 1,
    "ember.callbacks.lr_monitor": 1,
    "ember.callbacks.model_checkpoint": 1,
    "ember.callbacks.model_summary": 1,
    "ember.callbacks.on_exception_checkpoint": 1,
    "ember.callbacks.throughput_monitor": 1,
    "ember.callbacks.timer": 1,
    "ember.checkpoint._agree": 1,
    "ember.checkpoint._codec": 5,
    "ember.checkpoint._damage": 6,
    "ember.checkpoint._discovery": 5,
    "ember.checkpoint._read": 5,
    "ember.checkpoint._store": 5,
    "ember.checkpoint._tensors": 5,
    "ember.data": 1,
    "ember.faults": 5,
    "ember.loggers": 1,
    "ember.loggers.base": 1,
    "ember.loggers.csv_logs": 1,
    "ember.loggers.mlflow": 1,
    "ember.loggers.tensorboard": 1,
    "ember.loggers.wandb": 1,
    "ember.precision": 1,
    "ember.profilers": 5,
    "ember.strategies.ddp": 1,
    "ember.trainer.logging": 1,
    "ember.trainer.seed": 3,
    "ember.trainer.datamodule": 4,
    "ember.trainer._hparams": 1,
}

# `ember launch` configuration that would change what an Accelerator()/Trainer() built in an example does
LAUNCH_VARIABLES = (
    "EMBER_MIXED_PRECISION", "EMBER_STRATEGY", "EMBER_ACCELERATOR", "EMBER_GRADIENT_ACCUMULATION_STEPS",
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
)


#: modules whose examples need an optional extra: skipped, with the reason, where it is not installed
REQUIRES = {"ember.loggers.mlflow": "mlflow", "ember.loggers.wandb": "wandb", "ember.loggers.tensorboard": "tensorboard"}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_docstring_examples_pass(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if name in REQUIRES:
        pytest.importorskip(REQUIRES[name], reason=f"{name}'s examples need the {REQUIRES[name]} extra")
    for variable in LAUNCH_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.chdir(tmp_path)  # examples write only under tempfile.mkdtemp(); ./runs would land here
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name} (output above)"
    assert result.attempted >= MODULES[name], f"{name} runs {result.attempted} examples, expected >= {MODULES[name]}"
    assert not list(tmp_path.iterdir()), f"{name}'s examples wrote into the working directory"


def _public_members(cls: type, names: list[str] | None = None) -> list[tuple[str, object]]:
    if names is None:
        names = [n for n in vars(cls) if not n.startswith("_")]
    return [(n, vars(cls)[n]) for n in names]


def _undocumented(cls: type, names: list[str] | None = None) -> list[str]:
    missing = []
    for name, member in _public_members(cls, names):
        target = member.__func__ if isinstance(member, (classmethod, staticmethod)) else member
        if ">>>" not in (inspect.getdoc(target) or ""):
            missing.append(name)
    return missing


def test_every_public_accelerator_member_has_an_example() -> None:
    from ember.accelerator import Accelerator

    assert ">>>" in (Accelerator.__doc__ or "")
    assert _undocumented(Accelerator) == []


def test_trainer_and_module_verbs_have_examples() -> None:
    from ember.trainer.module import Module
    from ember.trainer.trainer import Trainer

    assert _undocumented(Trainer, ["fit", "validate", "test", "predict", "save_checkpoint"]) == []
    verbs = ["log", "log_dict", "save_hyperparameters", "optimizers", "lr_schedulers", "manual_backward", "wrap",
             "load_from_checkpoint"]
    assert _undocumented(Module, verbs) == []
