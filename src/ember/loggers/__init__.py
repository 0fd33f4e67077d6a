"""Experiment loggers shared by ``ember.Accelerator(log_with=...)`` and ``ember.Trainer(logger=...)``.

Importing this package is cheap: TensorBoard, W&B and MLflow are imported only when a logger
first writes.

Example:
    >>> import tempfile
    >>> from ember.loggers import CSVLogger, make_logger
    >>> logger = make_logger("csv", save_dir=tempfile.mkdtemp(), project_name="demo")
    >>> isinstance(logger, CSVLogger), logger.name
    (True, 'demo')
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ember.loggers._utils import did_you_mean
from ember.loggers.base import Logger
from ember.loggers.csv_logs import CSVLogger
from ember.loggers.mlflow import MLFlowLogger
from ember.loggers.tensorboard import TensorBoardLogger
from ember.loggers.wandb import WandbLogger

__all__ = [
    "TRACKER_NAMES",
    "CSVLogger",
    "Logger",
    "MLFlowLogger",
    "TensorBoardLogger",
    "WandbLogger",
    "make_logger",
]

TRACKER_NAMES: tuple[str, ...] = ("csv", "tensorboard", "wandb", "mlflow")
"""Tracker names accepted by :func:`make_logger` (and ``Accelerator(log_with=...)``)."""

# Trackers Accelerate knows that ember does not ship: a clearer message than "unknown".
_NOT_SHIPPED = ("comet_ml", "aim", "clearml", "dvclive", "swanlab", "trackio")


def make_logger(
    name: str,
    *,
    save_dir: str | os.PathLike[str],
    project_name: str,
    init_kwargs: Mapping[str, Any] | None = None,
) -> Logger:
    """Build the logger for an Accelerate-style tracker name.

    ``project_name`` becomes the logger's experiment name (CSV/TensorBoard ``name``, W&B
    ``project``, MLflow ``experiment_name``); files go under ``save_dir`` (MLflow: ``save_dir/mlruns``).
    ``init_kwargs`` (this tracker's entry of ``init_trackers(init_kwargs=...)``) are passed to the
    logger's constructor and override those defaults; for W&B, unknown keys reach ``wandb.init``.

    Args:
        name: One of :data:`TRACKER_NAMES` (case-insensitive).
        save_dir: Directory for local files (the accelerator's ``project_dir``).
        project_name: Experiment / project name.
        init_kwargs: Extra constructor arguments for this logger.

    Raises:
        ValueError: For an unknown name, listing the valid names with a "did you mean" hint.

    Example:
        >>> import tempfile
        >>> from ember.loggers import make_logger
        >>> make_logger("tensorboard", save_dir=tempfile.mkdtemp(), project_name="run").name
        'run'
    """
    if not isinstance(name, str):
        raise TypeError(f"Tracker name must be a string, got {type(name).__name__}: {name!r}.")
    key = name.strip().lower()
    save_dir = os.fspath(save_dir)
    kwargs = dict(init_kwargs or {})
    if key == "csv":
        return CSVLogger(**{"save_dir": save_dir, "name": project_name, **kwargs})
    if key == "tensorboard":
        return TensorBoardLogger(**{"save_dir": save_dir, "name": project_name, **kwargs})
    if key == "wandb":
        return WandbLogger(**{"save_dir": save_dir, "project": project_name, **kwargs})
    if key == "mlflow":
        defaults = {"save_dir": os.path.join(save_dir, "mlruns"), "experiment_name": project_name}
        return MLFlowLogger(**{**defaults, **kwargs})
    valid = ", ".join(repr(n) for n in TRACKER_NAMES)
    if key == "all":
        raise ValueError(f"'all' stands for every installed tracker; expand it to names from {valid} first.")
    if key in _NOT_SHIPPED:
        raise ValueError(
            f"ember has no built-in {name!r} tracker. Valid names: {valid}; or subclass "
            "ember.loggers.Logger and pass the instance instead of a name."
        )
    raise ValueError(f"Unknown tracker {name!r}. Valid names: {valid}." + did_you_mean(key, TRACKER_NAMES))
