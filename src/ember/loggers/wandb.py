"""Weights & Biases logger (``wandb`` is imported lazily, on first use)."""

from __future__ import annotations

import os
import warnings
from argparse import Namespace
from collections.abc import Mapping
from typing import Any, Literal

from ember.loggers._utils import (
    add_prefix,
    check_state,
    check_status,
    convert_params,
    require,
    to_number,
    to_plain,
)
from ember.loggers.base import Logger

__all__ = ["WandbLogger"]

_STEP_KEY = "trainer/global_step"
_EXIT_CODES = {"success": 0, "failed": 1, "interrupted": 255}


def _generate_id(length: int = 8) -> str:
    """A W&B-style run id (lowercase letters and digits)."""
    import secrets
    import string

    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


class WandbLogger(Logger):
    r"""Log to `Weights & Biases <https://wandb.ai>`_. Needs ``pip install ember[wandb]``.

    The run is started on first use with ``resume="allow"`` and a fixed id, so a resumed training
    run (after :meth:`load_state_dict`) keeps writing to the same W&B run. Metrics are logged with
    a ``trainer/global_step`` key that W&B uses as their x-axis (``define_metric``), so steps logged
    again after a resume are kept rather than dropped for being "in the past".
    ``offline=True`` (or ``WANDB_MODE=offline`` in the environment) writes the run locally under
    ``save_dir/wandb`` for a later ``wandb sync``.

    Args:
        name: Display name of the run.
        save_dir: Directory for W&B's local files (the ``wandb`` folder is created in it).
        version: Run id to use/resume (same as ``id``).
        offline: Run offline (``mode="offline"``), without network access.
        dir: Alternative to ``save_dir`` (used when ``save_dir`` is left at ``"."``).
        id: Run id to use/resume.
        anonymous: Deprecated by W&B; forwarded only when set.
        project: W&B project; default: ``$WANDB_PROJECT`` or ``"ember_logs"``.
        log_model: ``"all"``: upload every checkpoint as an artifact when saved; ``True``: upload
            the latest one at :meth:`finalize`; ``False``: never.
        experiment: An already started W&B run to log into.
        prefix: Prepended to every metric key, joined with ``"-"``.
        checkpoint_name: Name of the model artifact; default ``model-<run id>``.
        add_file_policy: ``"mutable"`` or ``"immutable"``: how checkpoint files are added to artifacts.
        \**kwargs: Passed to ``wandb.init`` (``entity``, ``tags``, ``group``, ``config``, ...).

    Example:
        >>> import tempfile
        >>> from ember.loggers import WandbLogger
        >>> logger = WandbLogger(project="demo", save_dir=tempfile.mkdtemp(), offline=True)
        >>> logger.log_hyperparams({"lr": 0.1})  # doctest: +SKIP
        >>> logger.log_metrics({"loss": 0.25}, step=10)  # doctest: +SKIP
        >>> logger.finalize("success")
    """

    def __init__(
        self,
        name: str | None = None,
        save_dir: str | os.PathLike[str] = ".",
        version: str | None = None,
        offline: bool = False,
        dir: str | os.PathLike[str] | None = None,
        id: str | None = None,
        anonymous: bool | None = None,
        project: str | None = None,
        log_model: Literal["all"] | bool = False,
        experiment: Any = None,
        prefix: str = "",
        checkpoint_name: str | None = None,
        add_file_policy: Literal["mutable", "immutable"] = "mutable",
        **kwargs: Any,
    ) -> None:
        require("wandb", "wandb", "WandbLogger")
        if offline and log_model:
            raise ValueError(
                f"WandbLogger(offline=True, log_model={log_model!r}) cannot upload checkpoints: set "
                "offline=False to log models, or log_model=False to run offline."
            )
        if log_model not in (True, False, "all"):
            raise ValueError(f"log_model must be True, False or 'all', got {log_model!r}.")
        directory = os.fspath(save_dir) if save_dir not in (None, ".") or dir is None else os.fspath(dir)
        self._save_dir = directory
        self._project = project or os.environ.get("WANDB_PROJECT", "ember_logs")
        self._run_name = name
        self._id = version or id
        self._offline = offline
        self._log_model = log_model
        self._prefix = prefix
        self._checkpoint_name = checkpoint_name
        self._add_file_policy = add_file_policy
        self._init_kwargs = dict(kwargs)
        if anonymous is not None:
            self._init_kwargs["anonymous"] = "allow" if anonymous else "never"
        self._experiment: Any = experiment
        self._pending_checkpoint: str | None = None

    @property
    def name(self) -> str:
        """The W&B project this run belongs to."""
        return self._project

    @property
    def version(self) -> str:
        """The run id (fixed before the run starts, so it is known without starting it)."""
        if self._experiment is not None:
            return str(self._experiment.id)
        if self._id is None:
            self._id = os.environ.get("WANDB_RUN_ID") or _generate_id()
        return self._id

    @property
    def save_dir(self) -> str:
        """Directory W&B writes its local ``wandb`` folder into."""
        return self._save_dir

    @property
    def experiment(self) -> Any:
        """The ``wandb`` Run, started on first access (``resume="allow"`` with this logger's id)."""
        if self._experiment is None:
            import wandb

            if wandb.run is not None:
                warnings.warn(
                    "A wandb run is already in progress; WandbLogger reuses it. Call wandb.finish() "
                    "before creating the logger if that is not what you want.",
                    stacklevel=2,
                )
                self._experiment = wandb.run
            else:
                os.makedirs(self._save_dir, exist_ok=True)
                init: dict[str, Any] = {
                    "name": self._run_name,
                    "project": self._project,
                    "dir": self._save_dir,
                    "id": self.version,
                    "resume": "allow",
                    **self._init_kwargs,
                }
                if self._offline:
                    init["mode"] = "offline"
                self._experiment = wandb.init(**init)
            run = self._experiment
            if callable(getattr(run, "define_metric", None)):
                run.define_metric(_STEP_KEY)
                run.define_metric("*", step_metric=_STEP_KEY, step_sync=True)
            self._id = str(run.id)
        return self._experiment

    def log_hyperparams(self, params: Mapping[str, Any] | Namespace) -> None:
        """Update the run's config (values W&B cannot store are converted to strings)."""
        self.experiment.config.update(to_plain(convert_params(params)), allow_val_change=True)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """``run.log`` the metrics, with ``trainer/global_step`` = ``step`` when given."""
        values: dict[str, Any] = {
            k: to_number(k, v) for k, v in add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR).items()
        }
        if step is not None:
            values[_STEP_KEY] = step
        self.experiment.log(values)

    def watch(
        self, model: Any, log: str | None = "gradients", log_freq: int = 100, log_graph: bool = True
    ) -> None:
        """Forward to ``run.watch`` (gradient/parameter histograms)."""
        self.experiment.watch(model, log=log, log_freq=log_freq, log_graph=log_graph)

    def after_save_checkpoint(self, path: str) -> None:
        """Upload the checkpoint now (``log_model="all"``) or remember it for :meth:`finalize` (``True``)."""
        if self._log_model == "all":
            self._log_checkpoint(path)
        elif self._log_model:
            self._pending_checkpoint = path

    def _log_checkpoint(self, path: str) -> None:
        import wandb

        run = self.experiment
        artifact = wandb.Artifact(name=self._checkpoint_name or f"model-{run.id}", type="model")
        if os.path.isdir(path):
            artifact.add_dir(path, policy=self._add_file_policy)
        else:
            artifact.add_file(path, name=os.path.basename(path), policy=self._add_file_policy)
        run.log_artifact(artifact, aliases=["latest"])

    def finalize(self, status: str) -> None:
        """Upload a pending checkpoint, then ``run.finish()``; later logging resumes the same run id."""
        check_status(status)
        if self._experiment is None:
            return
        if self._pending_checkpoint is not None:
            self._log_checkpoint(self._pending_checkpoint)
            self._pending_checkpoint = None
        self._id = str(self._experiment.id)
        self._experiment.finish(exit_code=_EXIT_CODES[status])
        self._experiment = None

    def state_dict(self) -> dict[str, Any]:
        """The run id and project, so a resumed run continues the same W&B run."""
        return {**super().state_dict(), "id": self.version, "project": self._project}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume the saved run id (``resume="allow"``); call it before anything is logged."""
        check_state(state, type(self).__name__)
        if self._experiment is not None and str(self._experiment.id) != state.get("id"):
            raise RuntimeError(
                "WandbLogger.load_state_dict() must be called before anything is logged: run "
                f"{self._experiment.id} is already active."
            )
        self._id = state.get("id") or self._id
        self._project = state.get("project") or self._project
