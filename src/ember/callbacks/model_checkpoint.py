"""``ModelCheckpoint``: keep the best (and/or last) checkpoints of a fit, as Lightning's does.

Checkpoints are ember's atomic directories, written through ``trainer.save_checkpoint`` (so through
``Accelerator.save_state``); a worse top-k checkpoint is deleted only after the new one is committed.

>>> from ember.callbacks import ModelCheckpoint
>>> import torch
>>> cb = ModelCheckpoint(dirpath="ckpts", filename="{epoch}-{val_loss:.2f}", monitor="val_loss")
>>> cb.format_checkpoint_name({"epoch": torch.tensor(3), "val_loss": torch.tensor(0.1234)})
'ckpts/epoch=3-val_loss=0.12'
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ember._errors import EmberConfigError, did_you_mean, unknown_value
from ember._log import info as _log_info
from ember.callbacks.base import Callback

if TYPE_CHECKING:
    from ember.trainer.module import Module
    from ember.trainer.trainer import Trainer


class ModelCheckpoint(Callback):
    """Save checkpoints periodically; with ``monitor``, keep the ``save_top_k`` best by ``mode``.

    Args mirror Lightning: ``dirpath`` (default: ``<trainer.log_dir>/checkpoints`` with a logger, else
    ``<default_root_dir>/checkpoints``), ``filename`` (template such as ``"{epoch}-{val_loss:.2f}"``,
    default ``"{epoch}-{step}"``), ``monitor``, ``save_last``, ``save_top_k`` (-1 = all), ``mode``,
    ``every_n_train_steps`` / ``train_time_interval`` / ``every_n_epochs`` (at most one),
    ``save_on_train_epoch_end``, ``auto_insert_metric_name``. Checkpoints are directories (no extension).
    """

    CHECKPOINT_JOIN_CHAR = "-"
    CHECKPOINT_EQUALS_CHAR = "="
    CHECKPOINT_NAME_LAST = "last"
    FILE_EXTENSION = ""
    _monitors_metrics = True

    def __init__(
        self,
        dirpath: str | os.PathLike[str] | None = None,
        filename: str | None = None,
        monitor: str | None = None,
        verbose: bool = False,
        save_last: bool | None = None,
        save_top_k: int = 1,
        mode: str = "min",
        auto_insert_metric_name: bool = True,
        every_n_train_steps: int | None = None,
        train_time_interval: datetime.timedelta | None = None,
        every_n_epochs: int | None = None,
        save_on_train_epoch_end: bool | None = None,
        enable_version_counter: bool = True,
    ) -> None:
        if mode not in ("min", "max"):
            raise unknown_value("ModelCheckpoint mode", mode, ["min", "max"])
        if not isinstance(save_top_k, int) or save_top_k < -1:
            raise EmberConfigError(f"ModelCheckpoint(save_top_k={save_top_k!r}) must be an int >= -1.")
        for name, value in (("every_n_train_steps", every_n_train_steps), ("every_n_epochs", every_n_epochs)):
            if value is not None and (not isinstance(value, int) or value < 0):
                raise EmberConfigError(f"ModelCheckpoint({name}={value!r}) must be an int >= 0 or None.")
        if sum(bool(v) for v in (every_n_train_steps, every_n_epochs, train_time_interval)) > 1:
            raise EmberConfigError("ModelCheckpoint: every_n_train_steps, every_n_epochs and train_time_interval are "
                                   "mutually exclusive; set one.")
        if monitor is None and save_top_k not in (-1, 0, 1):
            raise EmberConfigError(f"ModelCheckpoint(save_top_k={save_top_k}, monitor=None): without a monitor "
                                   "there is no quantity to rank; set monitor= or save_top_k to -1, 0 or 1.")
        self.dirpath = os.fspath(dirpath) if dirpath is not None else None
        self.filename = filename
        self.monitor = monitor
        self.verbose = verbose
        self.save_last = save_last
        self.save_top_k = save_top_k
        self.mode = mode
        self.auto_insert_metric_name = auto_insert_metric_name
        self._train_time_interval = train_time_interval
        if every_n_train_steps is None and every_n_epochs is None and train_time_interval is None:
            every_n_epochs = 1
        self._every_n_train_steps = every_n_train_steps or 0
        self._every_n_epochs = every_n_epochs or 0
        self._save_on_train_epoch_end = save_on_train_epoch_end
        self._enable_version_counter = enable_version_counter
        self.best_k_models: dict[str, torch.Tensor] = {}
        self.kth_best_model_path = ""
        self.kth_value = torch.tensor(torch.inf if mode == "min" else -torch.inf)
        self.best_model_score: torch.Tensor | None = None
        self.best_model_path = ""
        self.last_model_path = ""
        self.current_score: torch.Tensor | None = None
        self._last_global_step_saved = 0
        self._last_time_checked: float | None = None

    @property
    def state_key(self) -> str:
        return f"ModelCheckpoint{ {'monitor': self.monitor, 'mode': self.mode, 'every_n_train_steps': self._every_n_train_steps, 'every_n_epochs': self._every_n_epochs, 'train_time_interval': str(self._train_time_interval)}!r}"

    # hooks ----------------------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: Module, stage: str) -> None:
        if self.dirpath is None:
            base = trainer.log_dir if trainer.loggers else trainer.default_root_dir
            self.dirpath = str(Path(base) / "checkpoints")
        self.dirpath = trainer.accelerator.broadcast(self.dirpath)

    def on_train_start(self, trainer: Trainer, pl_module: Module) -> None:
        self._last_time_checked = time.monotonic()
        # after fit(ckpt_path=...), the step we resumed at is saved already: saving it again would happen on the
        # next micro-batch, inside an accumulation window, and a resume from there would not be exact
        self._last_global_step_saved = trainer.global_step

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: Module, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._should_skip(trainer):
            return
        skip_batch = self._every_n_train_steps < 1 or trainer.global_step % self._every_n_train_steps != 0
        skip_time = True
        if self._train_time_interval is not None and self._last_time_checked is not None:
            now = time.monotonic()
            skip_time = now - self._last_time_checked < self._train_time_interval.total_seconds()
            skip_time = bool(trainer.accelerator.broadcast(skip_time))  # rank 0's clock decides
            if not skip_time:
                self._last_time_checked = now
        if skip_batch and skip_time:
            return
        self._save_all(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: Module) -> None:
        if not self._should_skip(trainer) and self._save_on_epoch_end(trainer):
            self._save_all(trainer, epoch_check=True)

    def on_validation_end(self, trainer: Trainer, pl_module: Module) -> None:
        if not self._should_skip(trainer) and not self._save_on_epoch_end(trainer):
            self._save_all(trainer, epoch_check=True)

    def state_dict(self) -> dict[str, Any]:
        return {
            "monitor": self.monitor, "best_model_score": self.best_model_score, "best_model_path": self.best_model_path,
            "current_score": self.current_score, "dirpath": self.dirpath, "best_k_models": dict(self.best_k_models),
            "kth_best_model_path": self.kth_best_model_path, "kth_value": self.kth_value,
            "last_model_path": self.last_model_path,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("dirpath", self.dirpath) == self.dirpath:
            self.best_model_score = state_dict["best_model_score"]
            self.kth_best_model_path = state_dict["kth_best_model_path"]
            self.kth_value = state_dict["kth_value"]
            self.best_k_models = dict(state_dict["best_k_models"])
            self.last_model_path = state_dict["last_model_path"]
            self.current_score = state_dict.get("current_score")
        self.best_model_path = state_dict["best_model_path"]

    # decisions ------------------------------------------------------------------------------------------
    def _should_skip(self, trainer: Trainer) -> bool:
        return (
            bool(trainer.fast_dev_run) or trainer.state.fn != "fit" or trainer.sanity_checking
            or self._last_global_step_saved == trainer.global_step
        )

    def _save_on_epoch_end(self, trainer: Trainer) -> bool:
        if self._save_on_train_epoch_end is not None:
            return self._save_on_train_epoch_end
        if trainer.check_val_every_n_epoch != 1:
            return False
        if sum(trainer.num_val_batches) == 0:
            return True
        return trainer.val_check_interval == 1.0

    def _save_all(self, trainer: Trainer, epoch_check: bool = False) -> None:
        candidates = self._monitor_candidates(trainer)
        if not epoch_check or (self._every_n_epochs >= 1 and (trainer.current_epoch + 1) % self._every_n_epochs == 0):
            self._save_topk(trainer, candidates)
        self._save_last(trainer, candidates)

    def _monitor_candidates(self, trainer: Trainer) -> dict[str, torch.Tensor]:
        candidates = dict(trainer.callback_metrics)
        epoch, step = candidates.get("epoch"), candidates.get("step")
        candidates["epoch"] = epoch.int() if isinstance(epoch, torch.Tensor) else torch.tensor(trainer.current_epoch)
        candidates["step"] = step.int() if isinstance(step, torch.Tensor) else torch.tensor(trainer.global_step)
        return candidates

    def _save_topk(self, trainer: Trainer, candidates: dict[str, torch.Tensor]) -> None:
        if self.save_top_k == 0:
            return
        if self.monitor is None:
            filepath = self._new_filepath(candidates, self.best_model_path)
            previous, self.best_model_path = self.best_model_path, filepath
            self._save(trainer, filepath)
            if self.save_top_k == 1 and previous and previous != filepath:
                self._remove(trainer, previous)
            return
        if self.monitor not in candidates:
            available = sorted(k for k in candidates if k not in ("epoch", "step"))
            raise EmberConfigError(
                f"ModelCheckpoint(monitor={self.monitor!r}) found no metric {self.monitor!r}; logged metrics: "
                f"{available}.{did_you_mean(self.monitor, available)} Log it with self.log({self.monitor!r}, value) "
                "(in validation_step for a validation metric) or change monitor=."
            )
        current = candidates[self.monitor].detach().float().reshape(())
        if self._improves(trainer, current):
            self._update_best_and_save(trainer, current, candidates)
        elif self.verbose and trainer.is_global_zero:
            _log_info(f"epoch {trainer.current_epoch}, step {trainer.global_step}: {self.monitor} was not in top "
                  f"{self.save_top_k}")

    def _improves(self, trainer: Trainer, current: torch.Tensor) -> bool:
        if self.save_top_k == -1 or len(self.best_k_models) < self.save_top_k:
            return True
        worst = self.best_k_models[self.kth_best_model_path].to(current.device)
        better = bool(current < worst if self.mode == "min" else current > worst)
        return bool(trainer.accelerator.broadcast(better))  # rank 0 decides, every rank follows

    def _update_best_and_save(self, trainer: Trainer, current: torch.Tensor, candidates: dict[str, torch.Tensor]) -> None:
        k = len(self.best_k_models) + 1 if self.save_top_k == -1 else self.save_top_k
        doomed = None
        if len(self.best_k_models) == k and k > 0:
            doomed = self.kth_best_model_path
            self.best_k_models.pop(doomed)
        if torch.isnan(current):
            current = torch.tensor(torch.inf if self.mode == "min" else -torch.inf, device=current.device)
        filepath = self._new_filepath(candidates, doomed)
        self.current_score = current.cpu()
        self.best_k_models[filepath] = current.cpu()
        pick_worst, pick_best = (max, min) if self.mode == "min" else (min, max)
        if len(self.best_k_models) == k:
            self.kth_best_model_path = pick_worst(self.best_k_models, key=lambda p: float(self.best_k_models[p]))
            self.kth_value = self.best_k_models[self.kth_best_model_path]
        self.best_model_path = pick_best(self.best_k_models, key=lambda p: float(self.best_k_models[p]))
        self.best_model_score = self.best_k_models[self.best_model_path]
        if self.verbose and trainer.is_global_zero:
            _log_info(f"epoch {trainer.current_epoch}, step {trainer.global_step}: {self.monitor} reached "
                  f"{float(current):.5f} (best {float(self.best_model_score):.5f}), saving {filepath}")
        self._save(trainer, filepath)
        if doomed and doomed != filepath:
            self._remove(trainer, doomed)

    def _save_last(self, trainer: Trainer, candidates: dict[str, torch.Tensor]) -> None:
        if not self.save_last:
            return
        filepath = self.format_checkpoint_name(candidates, self.CHECKPOINT_NAME_LAST)
        previous, self.last_model_path = self.last_model_path, filepath
        self._save(trainer, filepath)
        if previous and previous != filepath:
            self._remove(trainer, previous)

    # files ----------------------------------------------------------------------------------------------
    def format_checkpoint_name(
        self, metrics: dict[str, Any], filename: str | None = None, ver: int | None = None
    ) -> str:
        """The checkpoint path for ``metrics`` (``{name}`` / ``{name:.2f}`` fields, ``name=`` inserted)."""
        name = self._format(filename or self.filename, dict(metrics))
        if ver is not None:
            name = self.CHECKPOINT_JOIN_CHAR.join((name, f"v{ver}"))
        name += self.FILE_EXTENSION
        return os.path.join(self.dirpath, name) if self.dirpath else name

    def _format(self, filename: str | None, metrics: dict[str, Any]) -> str:
        if not filename:
            filename = "{epoch}" + self.CHECKPOINT_JOIN_CHAR + "{step}"
        groups = sorted(re.findall(r"(\{.*?)[:\}]", filename), key=len, reverse=True)
        for group in groups:
            name = group[1:]
            if self.auto_insert_metric_name:
                filename = filename.replace(group, name + self.CHECKPOINT_EQUALS_CHAR + "{" + name)
            filename = filename.replace(group, f"{{0[{name}]")
            metrics.setdefault(name, torch.tensor(0))
        return filename.format(metrics)

    def _new_filepath(self, candidates: dict[str, torch.Tensor], replacing: str | None) -> str:
        filepath = self.format_checkpoint_name(candidates)
        version = 1
        while self._enable_version_counter and os.path.exists(filepath) and filepath != replacing:
            filepath = self.format_checkpoint_name(candidates, ver=version)
            version += 1
        return filepath

    def _save(self, trainer: Trainer, filepath: str) -> None:
        filepath = trainer.accelerator.broadcast(filepath)
        trainer.save_checkpoint(filepath)
        self._last_global_step_saved = trainer.global_step

    def _remove(self, trainer: Trainer, filepath: str) -> None:
        """Delete an older checkpoint (rank 0; never the one this fit resumed from)."""
        resumed = getattr(trainer, "ckpt_path", None)
        path = Path(filepath)
        if not trainer.is_global_zero or not path.is_dir() or (resumed and Path(resumed).resolve() == path.resolve()):
            return
        if self.dirpath is None or Path(self.dirpath).resolve() not in path.resolve().parents:
            return
        trash = path.with_name(f".del-{path.name}")
        shutil.rmtree(trash, ignore_errors=True)
        os.rename(path, trash)  # never half-deleted under its real name
        shutil.rmtree(trash, ignore_errors=True)

    def __repr__(self) -> str:
        return f"ModelCheckpoint(dirpath={self.dirpath!r}, monitor={self.monitor!r}, mode={self.mode!r})"
