"""MLflow logger (``mlflow`` / ``mlflow-skinny`` is imported lazily, on first use)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import time
import warnings
from argparse import Namespace
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlparse

from ember.loggers._utils import (
    add_prefix,
    check_state,
    check_status,
    convert_params,
    flatten_dict,
    require,
    to_number,
)
from ember.loggers.base import Logger

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

__all__ = ["MLFlowLogger"]

_RUN_STATUS = {"success": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
_DB_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
_ALLOW_FILE_STORE = "MLFLOW_ALLOW_FILE_STORE"
_BAD_KEY_CHARS = re.compile(r"[^a-zA-Z0-9_/. -]+")
_METRICS_PER_BATCH = 1000
_PARAMS_PER_BATCH = 100


def _local_path(uri: str) -> str | None:
    """The directory of a local (``file:`` or schemeless) tracking URI, else ``None``."""
    parsed = urlparse(uri)
    if parsed.scheme == "file" and parsed.netloc in ("", "localhost"):
        from urllib.request import url2pathname

        return url2pathname(parsed.path)
    if parsed.scheme == "" or len(parsed.scheme) == 1:  # plain path (or a Windows drive letter)
        return uri
    return None


@contextlib.contextmanager
def _file_store_allowed(uri: str) -> Iterator[None]:
    """Let MLflow >= 3 open a local file store while the tracking store is built.

    Recent MLflow releases refuse ``file:`` stores unless ``MLFLOW_ALLOW_FILE_STORE=true`` (the file
    store is in maintenance mode; their new default, SQLite, needs SQLAlchemy, which mlflow-skinny
    lacks). A local directory is what ``MLFLOW_TRACKING_URI``-less users (and Lightning's defaults)
    expect, so the opt-in is set for the duration of the store's construction only (MLflow caches
    the store per URI); an explicit value in the environment is always respected.
    """
    if _local_path(uri) is None or _ALLOW_FILE_STORE in os.environ:
        yield
        return
    os.environ[_ALLOW_FILE_STORE] = "true"
    try:
        yield
    finally:
        os.environ.pop(_ALLOW_FILE_STORE, None)


class MLFlowLogger(Logger):
    """Log to `MLflow <https://mlflow.org>`_. Needs ``pip install ember[mlflow]`` (mlflow-skinny).

    Without a ``tracking_uri`` (and no ``MLFLOW_TRACKING_URI``), runs go to a local file store in
    ``save_dir`` (``./mlruns``), as in Lightning. MLflow 3 refuses file stores unless
    ``MLFLOW_ALLOW_FILE_STORE=true``; this logger opts in for its own store only (an explicit value
    in the environment wins). To browse it, install the full ``mlflow`` package (the UI is not in
    mlflow-skinny) and run ``MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri ./mlruns``, or
    convert it with ``mlflow migrate-filestore``. A database store (``sqlite:///mlflow.db``) needs
    ``pip install sqlalchemy alembic`` (or full ``mlflow``). Metrics are sent with ``log_batch``
    (one request per :meth:`log_metrics` call).

    Args:
        experiment_name: MLflow experiment (created if missing).
        run_name: Display name of the run (``mlflow.runName`` tag).
        tracking_uri: Tracking server or store URI; default ``$MLFLOW_TRACKING_URI`` (read when the
            logger is created), else ``file:<save_dir>``.
        tags: Tags for the new run.
        save_dir: Local store directory used when there is no ``tracking_uri``.
        log_model: ``"all"``: log every checkpoint as an artifact when saved; ``True``: log the
            latest one at :meth:`finalize`; ``False``: never.
        prefix: Prepended to every metric key, joined with ``"-"``.
        artifact_location: Artifact root for a newly created experiment.
        run_id: Existing run to continue instead of starting a new one.
        synchronous: Passed to ``log_batch`` (``False`` logs asynchronously); default: MLflow's.

    Example:
        >>> import tempfile
        >>> from ember.loggers import MLFlowLogger
        >>> logger = MLFlowLogger(experiment_name="demo", save_dir=tempfile.mkdtemp())
        >>> logger.log_hyperparams({"lr": 0.1})  # doctest: +SKIP
        >>> logger.log_metrics({"loss": 0.25}, step=10)  # doctest: +SKIP
        >>> logger.finalize("success")
    """

    def __init__(
        self,
        experiment_name: str = "ember_logs",
        run_name: str | None = None,
        tracking_uri: str | None = None,
        tags: Mapping[str, Any] | None = None,
        save_dir: str | os.PathLike[str] | None = "./mlruns",
        log_model: Literal["all"] | bool = False,
        prefix: str = "",
        artifact_location: str | None = None,
        run_id: str | None = None,
        synchronous: bool | None = None,
    ) -> None:
        require("mlflow", "mlflow", "MLFlowLogger")
        if log_model not in (True, False, "all"):
            raise ValueError(f"log_model must be True, False or 'all', got {log_model!r}.")
        tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if not tracking_uri:
            tracking_uri = Path(os.fspath(save_dir or "./mlruns")).absolute().as_uri()
        scheme = urlparse(tracking_uri).scheme.split("+")[0]
        if scheme in _DB_SCHEMES and importlib.util.find_spec("sqlalchemy") is None:
            raise ModuleNotFoundError(
                f"MLFlowLogger(tracking_uri={tracking_uri!r}) needs a database store, which needs SQLAlchemy "
                "and Alembic (not part of mlflow-skinny). Install them with `pip install sqlalchemy alembic` "
                "(or `pip install mlflow`), or use a local directory: tracking_uri='file:./mlruns'."
            )
        self._experiment_name = experiment_name
        self._run_name = run_name
        self._tracking_uri = tracking_uri
        self.tags: dict[str, Any] = dict(tags or {})
        self._log_model = log_model
        self._prefix = prefix
        self._artifact_location = artifact_location
        self._run_id = run_id
        self._experiment_id: str | None = None
        self._log_batch_kwargs: dict[str, Any] = {} if synchronous is None else {"synchronous": synchronous}
        self._client: MlflowClient | None = None
        self._initialized = False
        self._pending_checkpoint: str | None = None
        self._warned_keys: set[str] = set()

    @property
    def experiment(self) -> MlflowClient:
        """The ``MlflowClient``; accessing it creates the experiment and run, or reopens a finished run."""
        if self._client is None:
            from mlflow.tracking import MlflowClient

            with _file_store_allowed(self._tracking_uri):
                self._client = MlflowClient(self._tracking_uri)
        if not self._initialized:
            self._open_run(self._client)
            self._initialized = True
        return self._client

    def _open_run(self, client: MlflowClient) -> None:
        if self._run_id is not None:
            run = client.get_run(self._run_id)
            self._experiment_id = run.info.experiment_id
            if run.info.status != "RUNNING":
                client.update_run(self._run_id, status="RUNNING")
            return
        if self._experiment_id is None:
            found = client.get_experiment_by_name(self._experiment_name)
            if found is not None and found.lifecycle_stage == "deleted":
                raise RuntimeError(
                    f"MLflow experiment {self._experiment_name!r} is deleted in {self._tracking_uri}: restore it "
                    "(`mlflow experiments restore`) or pick another experiment_name."
                )
            if found is not None:
                self._experiment_id = found.experiment_id
            else:
                self._experiment_id = client.create_experiment(
                    name=self._experiment_name, artifact_location=self._artifact_location
                )
        tags = dict(self.tags)
        if self._run_name is not None:
            tags["mlflow.runName"] = self._run_name
        try:
            from mlflow.tracking.context.registry import resolve_tags

            tags = resolve_tags(tags)
        except ImportError:  # pragma: no cover - very old MLflow
            pass
        run = client.create_run(experiment_id=self._experiment_id, tags=tags)
        self._run_id = run.info.run_id

    @property
    def run_id(self) -> str:
        """The MLflow run id (starts the run if there is none yet)."""
        if self._run_id is None:
            _ = self.experiment
        assert self._run_id is not None
        return self._run_id

    @property
    def experiment_id(self) -> str:
        """The MLflow experiment id (starts the run if there is none yet)."""
        if self._experiment_id is None:
            _ = self.experiment
        assert self._experiment_id is not None
        return self._experiment_id

    @property
    def name(self) -> str:
        """The experiment id (as in Lightning; starts the run if needed)."""
        return self.experiment_id

    @property
    def version(self) -> str:
        """The run id (starts the run if needed)."""
        return self.run_id

    @property
    def save_dir(self) -> str | None:
        """The local store directory, or ``None`` for a remote/database tracking URI."""
        return _local_path(self._tracking_uri)

    @property
    def tracking_uri(self) -> str:
        """The tracking URI in use."""
        return self._tracking_uri

    def log_hyperparams(self, params: Mapping[str, Any] | Namespace) -> None:
        """Log flattened params (``a/b`` keys) as strings, 100 per request."""
        from mlflow.entities import Param

        try:
            from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH as max_len
        except ImportError:  # pragma: no cover - very old MLflow
            max_len = 250
        flat = flatten_dict(convert_params(params))
        entries = [Param(key=k, value=str(v)[:max_len]) for k, v in flat.items()]
        client = self.experiment
        for start in range(0, len(entries), _PARAMS_PER_BATCH):
            chunk = entries[start : start + _PARAMS_PER_BATCH]
            client.log_batch(run_id=self.run_id, params=chunk, **self._log_batch_kwargs)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log all metrics in one ``log_batch`` (keys with characters MLflow rejects are cleaned)."""
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        entries = []
        for key, value in add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR).items():
            entries.append(
                Metric(
                    key=self._clean_key(key), value=to_number(key, value), timestamp=timestamp, step=step or 0
                )
            )
        client = self.experiment
        for start in range(0, len(entries), _METRICS_PER_BATCH):
            chunk = entries[start : start + _METRICS_PER_BATCH]
            client.log_batch(run_id=self.run_id, metrics=chunk, **self._log_batch_kwargs)

    def _clean_key(self, key: str) -> str:
        clean = _BAD_KEY_CHARS.sub("", key)
        if clean != key and key not in self._warned_keys:
            self._warned_keys.add(key)
            warnings.warn(
                f"MLflow metric names may only contain letters, digits, '_', '/', '.', '-' and ' ': "
                f"logging {key!r} as {clean!r}.",
                RuntimeWarning,
                stacklevel=3,
            )
        return clean

    def after_save_checkpoint(self, path: str) -> None:
        """Log the checkpoint as an artifact now (``log_model="all"``) or at :meth:`finalize` (``True``)."""
        if self._log_model == "all":
            self._log_checkpoint(path)
        elif self._log_model:
            self._pending_checkpoint = path

    def _log_checkpoint(self, path: str) -> None:
        artifact_path = Path(path).name if os.path.isdir(path) else Path(path).stem
        if os.path.isdir(path):
            self.experiment.log_artifacts(self.run_id, path, artifact_path)
        else:
            self.experiment.log_artifact(self.run_id, path, artifact_path)

    def finalize(self, status: str) -> None:
        """Log a pending checkpoint and mark the run FINISHED / FAILED / KILLED."""
        check_status(status)
        if not self._initialized or self._client is None or self._run_id is None:
            return
        if self._pending_checkpoint is not None:
            self._log_checkpoint(self._pending_checkpoint)
            self._pending_checkpoint = None
        self._client.set_terminated(self._run_id, _RUN_STATUS[status])
        self._initialized = False  # logging again reopens the same run

    def state_dict(self) -> dict[str, Any]:
        """The run and experiment ids (``None`` while no run was started)."""
        return {
            **super().state_dict(),
            "run_id": self._run_id,
            "experiment_id": self._experiment_id,
            "experiment_name": self._experiment_name,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue the saved run id; call it before anything is logged."""
        check_state(state, type(self).__name__)
        run_id = state.get("run_id")
        if self._initialized and run_id != self._run_id:
            raise RuntimeError(
                "MLFlowLogger.load_state_dict() must be called before anything is logged: run "
                f"{self._run_id} is already active."
            )
        if run_id is not None:
            self._run_id = str(run_id)
            self._experiment_id = state.get("experiment_id")
