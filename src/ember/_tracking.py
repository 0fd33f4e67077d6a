"""The Accelerator's trackers (``log_with``): thin glue over :mod:`ember.loggers`, main process only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ember._errors import EmberConfigError

if TYPE_CHECKING:
    from ember.accelerator import Accelerator
    from ember.loggers import Logger


def to_float(value: Any) -> float:
    """Read one logged value on the host (the single place a logged tensor is synchronised)."""
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().item())
    return float(value)


class Trackers:
    def __init__(self, accelerator: Accelerator, log_with: str | Any | Sequence[str | Any] | None) -> None:
        self._acc = accelerator
        items: list[Any] = [] if log_with is None else list(log_with) if isinstance(log_with, (list, tuple)) else [log_with]
        if items:
            from ember.loggers import TRACKER_NAMES
        self._requested: list[Any] = []
        for item in items:
            if isinstance(item, str):
                if item == "all":  # every tracker whose package is installed (csv always is)
                    self._requested.extend(n for n in TRACKER_NAMES if _installed(n))
                    continue
                if item not in TRACKER_NAMES:
                    from ember._errors import unknown_value

                    raise unknown_value("log_with", item, [*TRACKER_NAMES, "all"])
            self._requested.append(item)
        self.loggers: list[Logger] = []
        self._started = False
        self._pending: dict[str, Any] | None = None

    def init(self, project_name: str, config: dict[str, Any] | None, init_kwargs: dict[str, Any]) -> None:
        from ember.loggers import Logger, make_logger

        if not self._acc.is_main_process or self._started:
            return
        save_dir = str(self._acc.project_dir / "logs")
        version = shared_version(self._requested, save_dir, project_name, init_kwargs)
        for item in self._requested:
            if isinstance(item, Logger):
                self.loggers.append(item)
            else:
                kwargs = dict(init_kwargs.get(item) or {})
                if item in _VERSIONED and version is not None:
                    kwargs.setdefault("version", version)
                self.loggers.append(make_logger(item, save_dir=save_dir, project_name=project_name, init_kwargs=kwargs))
        if self._pending is not None:  # load_state() ran first: continue the saved runs (same version / id)
            self._apply(self._pending)
            self._pending = None
        if config:
            for logger in self.loggers:
                logger.log_hyperparams(config)
        self._started = True

    def state_dict(self) -> dict[str, Any]:
        """The trackers' run identities (version, run id, last step), saved with the Accelerator's state."""
        return {"loggers": [{"type": type(lg).__name__, "state": lg.state_dict()} for lg in self.loggers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the saved runs. Call ``load_state()`` before ``init_trackers()`` for this to take effect;
        trackers that already logged keep their new run (with a warning)."""
        if not self._acc.is_main_process:
            return
        if not self.loggers:
            self._pending = state
            return
        self._apply(state)

    def _apply(self, state: dict[str, Any]) -> None:
        import warnings

        for logger, saved in zip(self.loggers, state.get("loggers", [])):
            if saved.get("type") != type(logger).__name__:
                continue
            try:
                logger.load_state_dict(saved["state"])
            except RuntimeError:
                warnings.warn(
                    f"{type(logger).__name__} already logged before load_state(): it keeps its new run. Call "
                    "accelerator.load_state() before accelerator.init_trackers() to continue the saved run.",
                    stacklevel=4,
                )

    def get(self, name: str, unwrap: bool = False) -> Any:
        for logger in self.loggers:
            if type(logger).__name__.lower().startswith(name.lower().replace("_", "")):
                return logger.experiment if unwrap else logger
        raise EmberConfigError(f"no tracker named {name!r}; active: {[type(x).__name__ for x in self.loggers]}")

    def log(self, values: dict[str, Any], step: int | None) -> None:
        if not self._acc.is_main_process or not self.loggers:
            return
        metrics = {k: to_float(v) for k, v in values.items()}
        for logger in self.loggers:
            logger.log_metrics(metrics, step)

    def finish(self) -> None:
        if not self._acc.is_main_process:
            return
        for logger in self.loggers:
            logger.finalize("success")


_PACKAGES = {"csv": None, "tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
_VERSIONED = ("csv", "tensorboard")  # trackers that write <save_dir>/<name>/version_N


def shared_version(
    requested: Sequence[Any], save_dir: str, project_name: str, init_kwargs: dict[str, Any]
) -> int | None:
    """One ``version_N`` for every local tracker of the run (CSV and TensorBoard side by side in it), the next
    free number in each of their folders; None when fewer than two trackers would pick one.

    >>> import tempfile
    >>> shared_version(["csv", "tensorboard"], tempfile.mkdtemp(), "demo", {})
    0
    """
    import os

    from ember.loggers._utils import next_version

    picking = [t for t in requested if isinstance(t, str) and t in _VERSIONED
               and "version" not in (init_kwargs.get(t) or {})]
    if len(picking) < 2:
        return None
    roots = {os.path.join(save_dir, str((init_kwargs.get(t) or {}).get("name", project_name) or "")) for t in picking}
    return max(next_version(root) for root in roots)


def _installed(tracker: str) -> bool:
    import importlib.util

    package = _PACKAGES.get(tracker)
    return package is None or importlib.util.find_spec(package) is not None


# ------------------------------------------------------------------------------------------------------
# Accelerator verbs (assigned as methods in ember.accelerator)
# ------------------------------------------------------------------------------------------------------
def init_trackers(
    self: Accelerator, project_name: str, config: dict[str, Any] | None = None, init_kwargs: dict[str, Any] | None = None
) -> None:
    """Start the trackers named in ``log_with`` (main process only) and log ``config``.

    >>> from ember import Accelerator
    >>> import os, tempfile
    >>> accelerator = Accelerator(cpu=True, log_with="csv", project_dir=tempfile.mkdtemp())
    >>> accelerator.init_trackers("demo", config={"lr": 0.1})
    >>> accelerator.log({"loss": 0.5}, step=1); accelerator.end_training()
    >>> sorted(os.listdir(os.path.join(accelerator.project_dir, "logs", "demo", "version_0")))
    ['hparams.yaml', 'metrics.csv']
    """
    self.trackers.init(project_name, config, init_kwargs or {})


def get_tracker(self: Accelerator, name: str, unwrap: bool = False) -> Any:
    """The tracker (an ember logger) called ``name``; ``unwrap=True`` gives its underlying run/writer.

    >>> from ember import Accelerator
    >>> import tempfile
    >>> accelerator = Accelerator(cpu=True, log_with="csv", project_dir=tempfile.mkdtemp())
    >>> accelerator.init_trackers("demo")
    >>> type(accelerator.get_tracker("csv")).__name__
    'CSVLogger'
    >>> accelerator.end_training()
    """
    return self.trackers.get(name, unwrap)


def log(self: Accelerator, values: dict[str, Any], step: int | None = None, log_kwargs: dict[str, Any] | None = None) -> None:
    """Log scalars (tensors are read here, once) to every tracker, on the main process.

    >>> from ember import Accelerator
    >>> import os, tempfile
    >>> accelerator = Accelerator(cpu=True, log_with="csv", project_dir=tempfile.mkdtemp())
    >>> accelerator.init_trackers("demo")
    >>> accelerator.log({"loss": torch.tensor(0.5)}, step=3); accelerator.end_training()
    >>> print(open(os.path.join(accelerator.project_dir, "logs/demo/version_0/metrics.csv")).read())
    step,loss
    3,0.5
    <BLANKLINE>
    """
    self.trackers.log(values, step)
