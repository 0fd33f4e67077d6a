"""TensorBoard logger: real event files through ``torch.utils.tensorboard.SummaryWriter``."""

from __future__ import annotations

import os
import warnings
from argparse import Namespace
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ember.loggers._utils import (
    add_prefix,
    check_status,
    convert_params,
    flatten_dict,
    require,
    to_number,
    to_plain,
)
from ember.loggers.base import VersionedDirLogger

if TYPE_CHECKING:
    from torch import Tensor
    from torch.nn import Module
    from torch.utils.tensorboard import SummaryWriter

__all__ = ["TensorBoardLogger"]


class TensorBoardLogger(VersionedDirLogger):
    r"""Log to local TensorBoard event files in ``save_dir/name/version_N[/sub_dir]``.

    Hyperparameters go to ``hparams.yaml`` in ``log_dir`` and to TensorBoard's HParams plugin.
    Needs ``pip install ember[tensorboard]``.

    Args:
        save_dir: Root directory for all experiments.
        name: Experiment folder name; ``None`` or ``""`` puts versions directly in ``save_dir``.
        version: Version number or folder name; default: the next free ``version_N``.
        log_graph: Whether :meth:`log_graph` writes the model graph (uses ``example_input_array``).
        default_hp_metric: Log a placeholder ``hp_metric`` of -1 with the hyperparameters, so the
            HParams dashboard has a metric column, when no ``metrics`` are passed to :meth:`log_hyperparams`.
        prefix: Prepended to every metric key, joined with ``"-"``.
        sub_dir: Extra folder under the version directory for the event files.
        \**kwargs: Passed to ``SummaryWriter`` (e.g. ``max_queue``, ``flush_secs``).

    Example:
        >>> import tempfile
        >>> from ember.loggers import TensorBoardLogger
        >>> logger = TensorBoardLogger(tempfile.mkdtemp(), name="my_model")
        >>> logger.log_hyperparams({"lr": 0.1, "optimizer": "adam"})
        >>> logger.log_metrics({"loss": 0.25}, step=10)
        >>> logger.finalize("success")
        >>> logger.log_dir.endswith("my_model/version_0")
        True
    """

    NAME_HPARAMS_FILE = "hparams.yaml"

    def __init__(
        self,
        save_dir: str | os.PathLike[str],
        name: str | None = "ember_logs",
        version: int | str | None = None,
        log_graph: bool = False,
        default_hp_metric: bool = True,
        prefix: str = "",
        sub_dir: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> None:
        require("tensorboard", "tensorboard", "TensorBoardLogger")
        super().__init__(save_dir, name, version)
        self._log_graph = log_graph
        self._default_hp_metric = default_hp_metric
        self._prefix = prefix
        self._sub_dir = None if sub_dir is None else os.fspath(sub_dir)
        self._kwargs = kwargs
        self._experiment: SummaryWriter | None = None
        self.hparams: dict[str, Any] = {}

    @property
    def sub_dir(self) -> str | None:
        """Optional folder under the version directory holding the event files."""
        return self._sub_dir

    @property
    def log_dir(self) -> str:
        """``save_dir/name/version_N`` plus ``sub_dir`` when given."""
        log_dir = super().log_dir
        if self._sub_dir is not None:
            log_dir = os.path.expanduser(os.path.expandvars(os.path.join(log_dir, self._sub_dir)))
        return log_dir

    @property
    def experiment(self) -> SummaryWriter:
        """The ``SummaryWriter`` (created on first use; a resumed run hides events after its checkpoint)."""
        if self._experiment is None:
            from torch.utils.tensorboard import SummaryWriter

            kwargs = dict(self._kwargs)
            if self._resuming and self._resume_step is not None:
                # TensorBoard ignores older events at steps >= purge_step: those of the crashed run.
                kwargs.setdefault("purge_step", self._resume_step + 1)
                self._resume_step = None
            os.makedirs(self.log_dir, exist_ok=True)
            self._experiment = SummaryWriter(log_dir=self.log_dir, **kwargs)
        return self._experiment

    def _has_experiment(self) -> bool:
        return self._experiment is not None

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Write one scalar per key (a mapping value is written with ``add_scalars``)."""
        writer = self.experiment
        for key, value in add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR).items():
            if isinstance(value, Mapping):
                writer.add_scalars(key, {k: to_number(f"{key}/{k}", v) for k, v in value.items()}, step)
            else:
                writer.add_scalar(key, to_number(key, value), step)
        self._note_step(step)

    def log_hyperparams(
        self,
        params: Mapping[str, Any] | Namespace,
        metrics: Mapping[str, float] | float | None = None,
        step: int | None = None,
    ) -> None:
        """Record hyperparameters in ``hparams.yaml`` and in the HParams plugin.

        Args:
            params: Hyperparameters; nested mappings are flattened to ``a/b`` keys for TensorBoard.
            metrics: Metric values to show next to the hyperparameters (a bare number becomes
                ``hp_metric``); default ``{"hp_metric": -1}`` when ``default_hp_metric``.
            step: Step for those metric values.
        """
        from torch.utils.tensorboard.summary import hparams

        plain = convert_params(params)
        self.hparams.update(to_plain(plain))
        self._write_hparams_yaml()

        flat = {
            k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in flatten_dict(plain).items()
        }
        metric_dict: dict[str, float] = {}
        if metrics is None:
            if self._default_hp_metric:
                metric_dict = {"hp_metric": -1}
        elif isinstance(metrics, Mapping):
            metric_dict = dict(metrics)
        else:
            metric_dict = {"hp_metric": metrics}
        if metric_dict:
            self.log_metrics(metric_dict, step)
        file_writer = self.experiment._get_file_writer()  # type: ignore[no-untyped-call]
        for summary in hparams(flat, metric_dict):  # type: ignore[no-untyped-call]
            file_writer.add_summary(summary, step)

    def _write_hparams_yaml(self) -> None:
        import yaml

        os.makedirs(self.log_dir, exist_ok=True)
        path = os.path.join(self.log_dir, self.NAME_HPARAMS_FILE)
        with open(f"{path}.tmp", "w", encoding="utf-8") as file:
            yaml.safe_dump(self.hparams, file, sort_keys=False)
        os.replace(f"{path}.tmp", path)

    def log_graph(self, model: Module, input_array: Tensor | None = None) -> None:
        """Write the model graph when ``log_graph=True`` (input: ``input_array`` or ``model.example_input_array``)."""
        if not self._log_graph:
            return
        example = input_array if input_array is not None else getattr(model, "example_input_array", None)
        if example is None:
            warnings.warn(
                "TensorBoardLogger(log_graph=True) could not log the graph: pass `input_array` or set "
                "`model.example_input_array`.",
                stacklevel=2,
            )
            return
        self.experiment.add_graph(model, example)

    def save(self) -> None:
        """Flush pending events to disk."""
        if self._experiment is not None:
            self._experiment.flush()

    def finalize(self, status: str) -> None:
        """Flush and close the event file; a later call to :meth:`log_metrics` opens a new one."""
        check_status(status)
        if self._experiment is not None:
            self._experiment.flush()
            self._experiment.close()
            self._experiment = None
