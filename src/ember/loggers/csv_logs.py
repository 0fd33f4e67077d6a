"""CSV logger: ``metrics.csv`` + ``hparams.yaml`` on the local file system, no extra dependency."""

from __future__ import annotations

import csv
import os
import warnings
from argparse import Namespace
from collections.abc import Mapping
from typing import Any

from ember.loggers._utils import add_prefix, check_status, convert_params, to_number, to_plain
from ember.loggers.base import VersionedDirLogger

__all__ = ["CSVLogger"]


def _replace_atomically(path: str, write: Any) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as file:
        write(file)
    os.replace(tmp, path)


class CSVExperimentWriter:
    """Buffers metric rows and writes ``metrics.csv`` / ``hparams.yaml`` in ``log_dir``.

    The CSV has a ``step`` column followed by one column per metric (sorted). A metric key that
    appears later rewrites the file with the widened header; earlier rows get empty cells.
    """

    NAME_METRICS_FILE = "metrics.csv"
    NAME_HPARAMS_FILE = "hparams.yaml"

    def __init__(self, log_dir: str, resume: bool = False, resume_step: int | None = None) -> None:
        self.log_dir = log_dir
        self.metrics_file_path = os.path.join(log_dir, self.NAME_METRICS_FILE)
        self.hparams_file_path = os.path.join(log_dir, self.NAME_HPARAMS_FILE)
        self.metrics: list[dict[str, float | int]] = []
        self.metrics_keys: list[str] = []
        self.hparams: dict[str, Any] = {}
        if resume:
            self._load_existing(resume_step)
        elif os.path.isfile(self.metrics_file_path):  # hparams.yaml alone: another logger of this run wrote it
            warnings.warn(
                f"Experiment logs directory {log_dir} already holds metrics.csv/hparams.yaml; they will be "
                "overwritten. Use a new version, or load the logger's state_dict to append to a resumed run.",
                stacklevel=3,
            )
            for path in (self.metrics_file_path, self.hparams_file_path):
                if os.path.isfile(path):
                    os.remove(path)
        os.makedirs(log_dir, exist_ok=True)

    @property
    def fieldnames(self) -> list[str]:
        """Header of ``metrics.csv``: ``step`` then the metric keys."""
        return ["step", *self.metrics_keys]

    def log_metrics(self, metrics: Mapping[str, float | int], step: int) -> None:
        """Buffer one row."""
        self.metrics.append({**metrics, "step": step})

    def log_hparams(self, params: Mapping[str, Any]) -> None:
        """Merge ``params`` into the recorded hyperparameters and rewrite ``hparams.yaml``."""
        import yaml

        self.hparams.update(to_plain(dict(params)))
        _replace_atomically(
            self.hparams_file_path, lambda f: yaml.safe_dump(self.hparams, f, sort_keys=False)
        )

    def save(self) -> None:
        """Write buffered rows; widen the header (rewriting the file) if new keys appeared."""
        if not self.metrics:
            return
        seen = {key for row in self.metrics for key in row} - {"step"}
        new_keys = seen - set(self.metrics_keys)
        file_exists = os.path.isfile(self.metrics_file_path)
        if new_keys:
            self.metrics_keys = sorted([*self.metrics_keys, *new_keys])
            if file_exists:
                self._rewrite(self._read_rows())
        with open(self.metrics_file_path, "a" if file_exists else "w", newline="", encoding="utf-8") as file:
            writer = csv.DictWriter(file, fieldnames=self.fieldnames)
            if not file_exists:
                writer.writeheader()
            writer.writerows(self.metrics)
        self.metrics = []

    def _read_rows(self) -> list[dict[str, str]]:
        with open(self.metrics_file_path, newline="", encoding="utf-8") as file:
            return list(csv.DictReader(file))

    def _rewrite(self, rows: list[dict[str, str]]) -> None:
        def write(file: Any) -> None:
            writer = csv.DictWriter(file, fieldnames=self.fieldnames, restval="")
            writer.writeheader()
            writer.writerows(rows)

        _replace_atomically(self.metrics_file_path, write)

    def _load_existing(self, resume_step: int | None) -> None:
        """Append to a resumed run: keep its header and drop rows logged after the checkpoint."""
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="", encoding="utf-8") as file:
                reader = csv.DictReader(file)
                rows = list(reader)
                header = list(reader.fieldnames or [])
            self.metrics_keys = [key for key in header if key != "step"]
            if resume_step is not None:
                kept = [row for row in rows if not row.get("step") or int(float(row["step"])) <= resume_step]
                if len(kept) != len(rows):
                    self._rewrite(kept)
        if os.path.isfile(self.hparams_file_path):
            import yaml

            with open(self.hparams_file_path, encoding="utf-8") as file:
                loaded = yaml.safe_load(file)
            if isinstance(loaded, dict):
                self.hparams = loaded


class CSVLogger(VersionedDirLogger):
    """Log metrics to ``metrics.csv`` and hyperparameters to ``hparams.yaml``.

    Files go to ``save_dir/name/version_N`` (``N`` = next free number, or ``version`` if given;
    a string ``version`` is used as the folder name). Rows are buffered and written every
    ``flush_logs_every_n_steps`` steps and on :meth:`save` / :meth:`finalize`.

    Args:
        save_dir: Root directory for all experiments.
        name: Experiment folder name; ``None`` or ``""`` puts versions directly in ``save_dir``.
        version: Version number or folder name; default: the next free ``version_N``.
        prefix: Prepended to every metric key, joined with ``"-"``.
        flush_logs_every_n_steps: How often (in steps) buffered rows are written to disk.

    Example:
        >>> import tempfile
        >>> from ember.loggers import CSVLogger
        >>> logger = CSVLogger(tempfile.mkdtemp(), name="my_model")
        >>> logger.log_hyperparams({"lr": 0.1})
        >>> logger.log_metrics({"loss": 0.25}, step=0)
        >>> logger.finalize("success")
        >>> open(logger.log_dir + "/metrics.csv").read().splitlines()
        ['step,loss', '0,0.25']
    """

    def __init__(
        self,
        save_dir: str | os.PathLike[str],
        name: str | None = "ember_logs",
        version: int | str | None = None,
        prefix: str = "",
        flush_logs_every_n_steps: int = 100,
    ) -> None:
        if flush_logs_every_n_steps < 1:
            raise ValueError(f"flush_logs_every_n_steps must be >= 1, got {flush_logs_every_n_steps}.")
        super().__init__(save_dir, name, version)
        self._prefix = prefix
        self._flush_logs_every_n_steps = flush_logs_every_n_steps
        self._experiment: CSVExperimentWriter | None = None
        self._rows_logged = 0
        self._flushed_bucket = 0

    @property
    def experiment(self) -> CSVExperimentWriter:
        """The :class:`CSVExperimentWriter` (created on first use; creates ``log_dir``)."""
        if self._experiment is None:
            self._experiment = CSVExperimentWriter(self.log_dir, self._resuming, self._resume_step)
        return self._experiment

    def _has_experiment(self) -> bool:
        return self._experiment is not None

    def log_hyperparams(self, params: Mapping[str, Any] | Namespace) -> None:
        """Merge ``params`` into ``hparams.yaml`` (non-plain values are stored as strings)."""
        self.experiment.log_hparams(convert_params(params))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Buffer one row; without ``step`` the row index is used."""
        values = {
            k: to_number(k, v) for k, v in add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR).items()
        }
        if step is None:
            step = self._rows_logged
        self.experiment.log_metrics(values, step)
        self._rows_logged += 1
        self._note_step(step)
        bucket = (step + 1) // self._flush_logs_every_n_steps
        if bucket > self._flushed_bucket:
            self._flushed_bucket = bucket
            self.save()

    def save(self) -> None:
        """Write buffered rows to ``metrics.csv``."""
        if self._experiment is not None:
            self._experiment.save()

    def finalize(self, status: str) -> None:
        """Flush buffered rows (``status`` does not change what is written)."""
        check_status(status)
        self.save()
