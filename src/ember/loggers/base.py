"""The ``Logger`` interface shared by ``ember.Accelerator`` trackers and ``ember.Trainer`` loggers."""

from __future__ import annotations

import abc
import os
from argparse import Namespace
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ember.loggers._utils import check_state, check_status, next_version

if TYPE_CHECKING:
    from torch import Tensor
    from torch.nn import Module

__all__ = ["Logger"]


class Logger(abc.ABC):
    """Base class of every ember logger (experiment tracker).

    One set of loggers serves both layers: ``Accelerator(log_with=...)`` and ``Trainer(logger=...)``.
    Loggers never check ranks: callers only call them on the main process. Metric values passed to
    :meth:`log_metrics` are already Python numbers (the caller reads device tensors once per log
    interval). The underlying writer/run (:attr:`experiment`) is created lazily, on first use.

    Example:
        >>> from ember.loggers import Logger
        >>> class PrintLogger(Logger):
        ...     name, version = "demo", 0
        ...     experiment = None
        ...     def log_hyperparams(self, params): print(dict(params))
        ...     def log_metrics(self, metrics, step=None): print(step, dict(metrics))
        >>> PrintLogger().log_metrics({"loss": 0.5}, step=3)
        3 {'loss': 0.5}
    """

    LOGGER_JOIN_CHAR = "-"

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """Experiment name (for W&B: the project; for MLflow: the experiment id)."""

    @property
    @abc.abstractmethod
    def version(self) -> int | str:
        """Experiment version (``N`` of ``version_N``; for W&B/MLflow: the run id)."""

    @property
    def save_dir(self) -> str | None:
        """Root directory the logger writes under, or ``None`` when it does not write locally."""
        return None

    @property
    def log_dir(self) -> str | None:
        """Directory of this run's files, or ``None`` when the logger has no such directory."""
        return None

    @property
    @abc.abstractmethod
    def experiment(self) -> Any:
        """The underlying writer or run, created on first access."""

    @abc.abstractmethod
    def log_hyperparams(self, params: Mapping[str, Any] | Namespace) -> None:
        """Record hyperparameters (a mapping or an ``argparse.Namespace``)."""

    @abc.abstractmethod
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Record scalar metrics (Python numbers) at ``step``."""

    def log_graph(self, model: Module, input_array: Tensor | None = None) -> None:
        """Record the model graph; a no-op unless the logger supports it."""

    def save(self) -> None:
        """Flush anything buffered to its destination."""

    def finalize(self, status: str) -> None:
        """Flush and close the run; ``status`` is ``"success"``, ``"failed"`` or ``"interrupted"``."""
        check_status(status)
        self.save()

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state that lets a resumed run continue the same version / run id."""
        return {"logger": type(self).__name__}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned; call it before anything is logged."""
        check_state(state, type(self).__name__)

    def after_save_checkpoint(self, path: str) -> None:
        """Called after a checkpoint directory/file at ``path`` was committed; no-op by default."""


class VersionedDirLogger(Logger):
    """Shared logic of loggers that write to ``save_dir/name/version_N`` (CSV, TensorBoard)."""

    def __init__(self, save_dir: str | os.PathLike[str], name: str | None, version: int | str | None) -> None:
        self._save_dir = os.fspath(save_dir)
        self._name = name or ""
        self._version = version
        self._resuming = False
        self._resume_step: int | None = None
        self._last_step: int | None = None

    @property
    def name(self) -> str:
        """Experiment name: the folder under ``save_dir`` holding the versions (may be empty)."""
        return self._name

    @property
    def version(self) -> int | str:
        """Version number (next free ``version_N`` in ``save_dir/name``, computed once) or given string."""
        if self._version is None:
            root = os.path.expanduser(os.path.expandvars(os.path.join(self._save_dir, self._name)))
            self._version = next_version(root)
        return self._version

    @property
    def save_dir(self) -> str:
        """The directory holding all experiments (as given to the constructor)."""
        return self._save_dir

    @property
    def root_dir(self) -> str:
        """``save_dir/name``: the parent of the version directories."""
        return os.path.join(self._save_dir, self._name)

    @property
    def log_dir(self) -> str:
        """``save_dir/name/version_N`` (or ``.../<version>`` when ``version`` is a string)."""
        version = self.version if isinstance(self.version, str) else f"version_{self.version}"
        return os.path.expanduser(os.path.expandvars(os.path.join(self.root_dir, version)))

    def _note_step(self, step: int | None) -> None:
        if step is not None and (self._last_step is None or step > self._last_step):
            self._last_step = step

    def state_dict(self) -> dict[str, Any]:
        """Name, version and the last logged step (used to drop rows a crashed run wrote after it)."""
        return {
            **super().state_dict(),
            "name": self._name,
            "version": self.version,
            "last_step": self._last_step,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue writing into the saved ``name/version`` directory."""
        super().load_state_dict(state)
        if self._has_experiment():
            raise RuntimeError(
                f"{type(self).__name__}.load_state_dict() must be called before anything is logged: "
                f"this logger already writes to {self.log_dir}."
            )
        self._name = str(state.get("name", self._name))
        self._version = state["version"]
        self._resuming = True
        last = state.get("last_step")
        self._resume_step = None if last is None else int(last)
        self._last_step = self._resume_step

    @abc.abstractmethod
    def _has_experiment(self) -> bool:
        """Whether the writer exists already."""
