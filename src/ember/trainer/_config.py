"""Checking the Trainer's flags before anything is built (rule 5: errors for people, before any work)."""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterable, Mapping
from typing import Any

from ember._errors import EmberConfigError, did_you_mean, unknown_value
from ember.precision import PRECISION_ALIASES

TRAINER_FLAGS = (
    "accelerator", "devices", "num_nodes", "strategy", "precision", "max_epochs", "min_epochs", "max_steps",
    "min_steps", "max_time", "val_check_interval", "check_val_every_n_epoch", "limit_train_batches",
    "limit_val_batches", "limit_test_batches", "limit_predict_batches", "num_sanity_val_steps",
    "gradient_clip_val", "gradient_clip_algorithm", "accumulate_grad_batches", "callbacks", "logger",
    "log_every_n_steps", "enable_progress_bar", "enable_checkpointing", "enable_model_summary", "profiler",
    "deterministic", "benchmark", "inference_mode", "detect_anomaly", "sync_batchnorm", "fast_dev_run",
    "overfit_batches", "default_root_dir", "seed", "handle_signals", "nonfinite", "timeout",
)
#: Lightning flags ember does not have; a ported script gets a clear message instead of a TypeError
LIGHTNING_ONLY = {
    "plugins": "pass a Precision or Strategy object as precision=/strategy= instead",
    "barebones": "disable the extras one by one (logger=False, enable_progress_bar=False, ...)",
    "reload_dataloaders_every_n_epochs": "rebuild the dataloaders yourself between fit calls",
    "use_distributed_sampler": "ember always shards map-style datasets; pass a DataLoader you shard yourself "
    "through a custom sampler on one process",
    "enable_autolog_hparams": "hyperparameters from save_hyperparameters(logger=...) are logged",
    "model_registry": "save with trainer.save_checkpoint and upload it yourself",
}
ACCELERATOR_NAMES = ("auto", "cpu", "gpu", "cuda")
CLIP_ALGORITHMS = ("norm", "value")


def check_unknown(kwargs: Mapping[str, Any]) -> None:
    for name in kwargs:
        if name in LIGHTNING_ONLY:
            raise EmberConfigError(f"Trainer({name}=...) is a Lightning flag ember does not have: {LIGHTNING_ONLY[name]}.")
        raise EmberConfigError(
            f"Trainer got an unknown argument {name!r}.{did_you_mean(name, TRAINER_FLAGS)} "
            f"Valid arguments: {', '.join(TRAINER_FLAGS)}."
        )


def check_choice(argument: str, value: Any, valid: Iterable[str]) -> str:
    if not isinstance(value, str) or value.lower() not in valid:
        raise unknown_value(argument, value, valid)
    return value.lower()


#: precision names other libraries accept that ember has no implementation for (a clear "not supported")
UNSUPPORTED_PRECISION = ("fp8", "8", "8-mixed", "transformer-engine", "transformer-engine-float16")


def check_precision(value: Any) -> Any:
    if hasattr(value, "autocast") and hasattr(value, "scale_loss"):
        return value  # a Precision object
    key = str(value).lower()
    if key in UNSUPPORTED_PRECISION:
        valid = ", ".join(repr(v) for v in dict.fromkeys(PRECISION_ALIASES.values()))
        raise EmberConfigError(
            f"precision={value!r}: FP8 training is not supported by ember. Valid values: {valid} (and the aliases "
            f"{', '.join(repr(k) for k in PRECISION_ALIASES if k not in PRECISION_ALIASES.values())}); on recent "
            "GPUs 'bf16-mixed' is the closest."
        )
    if key not in PRECISION_ALIASES:
        raise unknown_value("precision", value, list(PRECISION_ALIASES))
    return key


def check_strategy(value: Any) -> Any:
    if value is None or not isinstance(value, str):
        return value  # a Strategy object (or None = auto)
    from ember.strategies import strategy_names

    return check_choice("strategy", value, strategy_names())


def check_int(name: str, value: Any, minimum: int, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise EmberConfigError(f"{name}={value!r} must be an integer >= {minimum}{' or None' if allow_none else ''}.")
    return value


def parse_limit(name: str, value: int | float | None) -> int | float:
    """``None``/1.0 → every batch; a float in [0, 1] → that fraction; an int → that many batches."""
    if value is None:
        return 1.0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise EmberConfigError(f"{name}={value!r} must be a float in [0, 1] or an integer number of batches.")
    if isinstance(value, float):
        if not 0.0 <= value <= 1.0:
            raise EmberConfigError(f"{name}={value} as a float is a fraction and must be in [0, 1]; use an int for a count.")
        return value
    if value < 0:
        raise EmberConfigError(f"{name}={value} must be >= 0.")
    return value


def apply_limit(limit: int | float, length: float) -> float:
    """Number of batches used out of ``length`` (which may be ``inf``)."""
    if isinstance(limit, int):
        return float(min(limit, length))
    if length == math.inf:
        if limit not in (0.0, 1.0):
            raise EmberConfigError("a fractional limit_*_batches needs a dataloader with a length; use an int.")
        return math.inf if limit == 1.0 else 0.0
    return float(int(length * limit)) if limit < 1.0 else float(length)


def parse_max_time(value: Any) -> float | None:
    """Seconds from "DD:HH:MM:SS", a ``timedelta`` or a dict of ``timedelta`` arguments (``Timer``'s parser)."""
    from ember.callbacks.timer import parse_duration

    return parse_duration(value, "max_time")


def resolve_epochs(max_epochs: int | None, max_steps: int, min_epochs: int | None) -> tuple[int, int]:
    """Lightning's defaults: 1000 epochs when neither max_epochs nor max_steps is given; -1 = no limit."""
    for name, value in (("max_steps", max_steps), ("max_epochs", max_epochs)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < -1):
            raise EmberConfigError(f"{name}={value!r} must be an integer >= 0, or -1 for no limit.")
    if max_epochs is None:
        max_epochs = 1000 if max_steps == -1 else -1
    minimum = check_int("min_epochs", min_epochs, 0, allow_none=True) or 0
    if max_epochs != -1 and minimum > max_epochs:
        raise EmberConfigError(f"min_epochs={minimum} is larger than max_epochs={max_epochs}.")
    return max_epochs, minimum


def check_timeout(value: Any) -> Any:
    """``Trainer(timeout=...)``: seconds (> 0) or a ``timedelta``, passed to the Accelerator as is."""
    if value is None or isinstance(value, datetime.timedelta):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise EmberConfigError(f"timeout={value!r} must be a number of seconds > 0, a datetime.timedelta or None.")
    return float(value)


def check_val_interval(value: Any, every_n_epochs: int | None) -> int | float:
    if value is None:
        return 1.0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise EmberConfigError(f"val_check_interval={value!r} must be a float in (0, 1] or an int number of batches.")
    if isinstance(value, float) and not 0.0 < value <= 1.0:
        raise EmberConfigError(f"val_check_interval={value} as a float is a fraction of the epoch, in (0, 1].")
    if isinstance(value, int) and value < 1:
        raise EmberConfigError(f"val_check_interval={value} must be >= 1 batch.")
    if every_n_epochs is not None:
        check_int("check_val_every_n_epoch", every_n_epochs, 1)
    return value
