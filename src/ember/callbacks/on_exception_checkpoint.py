"""``OnExceptionCheckpoint``: save a checkpoint when ``fit`` fails or is interrupted (Ctrl-C).

The checkpoint is an ordinary ember checkpoint directory, ``<dirpath>/<filename>`` (Lightning writes
``<filename>.ckpt``; ember checkpoints are directories), written through ``trainer.save_checkpoint`` — so
``trainer.fit(model, ckpt_path="<dirpath>/<filename>")`` resumes from it. As Lightning, the directory is
removed again when a later ``fit`` with this callback finishes successfully.

Several processes: saving is a collective (every rank writes its part). It works when every rank raises
— a KeyboardInterrupt delivered to the whole job, ``Accelerator(nonfinite="halt")``'s
``NonFiniteError``, or the same bug on every rank. When only some ranks raise, the others are still
inside a collective of the training step, so the save waits until the process-group timeout
(``Accelerator(timeout=...)``) and then fails: no checkpoint is written, a warning says so, and the original
exception propagates unchanged. After a :class:`~ember.faults.CollectiveFailedError` (a peer died or stalled)
the save is not attempted at all. For failures of one rank, save periodically with ``ModelCheckpoint``.

>>> from ember.callbacks import OnExceptionCheckpoint
>>> OnExceptionCheckpoint("checkpoints").ckpt_path
'checkpoints/on_exception'
"""

from __future__ import annotations

import os
import shutil
import warnings
from typing import TYPE_CHECKING

from ember._errors import EmberConfigError
from ember._log import info as _log_info
from ember.callbacks.base import Callback

if TYPE_CHECKING:
    from ember.trainer.module import Module
    from ember.trainer.trainer import Trainer


class OnExceptionCheckpoint(Callback):
    """Save ``<dirpath>/<filename>`` when an exception (or KeyboardInterrupt) ends ``fit``.

    Args:
        dirpath: Directory the checkpoint goes in.
        filename: Name of the checkpoint directory (not empty).
    """

    def __init__(self, dirpath: str | os.PathLike[str], filename: str = "on_exception") -> None:
        if not filename:
            raise EmberConfigError("OnExceptionCheckpoint(filename='') must name the checkpoint directory.")
        if os.sep in filename or (os.altsep and os.altsep in filename):
            raise EmberConfigError(f"OnExceptionCheckpoint(filename={filename!r}) is a name, not a path; put the "
                                   "directory in dirpath.")
        self.dirpath = os.fspath(dirpath)
        self.filename = filename
        self.saved_path: str | None = None

    @property
    def state_key(self) -> str:
        return f"OnExceptionCheckpoint{ {'dirpath': self.dirpath, 'filename': self.filename}!r}"

    @property
    def ckpt_path(self) -> str:
        """Where the checkpoint is written."""
        return os.path.join(self.dirpath, self.filename)

    def on_exception(self, trainer: Trainer, pl_module: Module, exception: BaseException) -> None:
        if trainer.state.fn != "fit" or trainer._wrapped is None or not trainer.optimizers:
            return  # failed before the model and optimizers were set up: there is nothing to save
        from ember.faults import CollectiveFailedError

        if trainer.world_size > 1 and isinstance(exception, CollectiveFailedError):
            warnings.warn(f"OnExceptionCheckpoint: not saving {self.ckpt_path}: a peer rank failed, so a "
                          "collective save cannot complete.", stacklevel=2)
            return
        try:
            self.saved_path = str(trainer.save_checkpoint(self.ckpt_path))
        except Exception as err:  # never hide the exception that ended the fit
            warnings.warn(f"OnExceptionCheckpoint: could not save {self.ckpt_path}: {type(err).__name__}: {err}",
                          stacklevel=2)
            return
        if trainer.is_global_zero:
            _log_info(f"{type(exception).__name__} during fit: checkpoint saved to {self.saved_path}")

    def teardown(self, trainer: Trainer, pl_module: Module, stage: str) -> None:
        """A successful fit removes the checkpoint a failed one left (as Lightning)."""
        path = self.ckpt_path
        if stage == "fit" and trainer.is_global_zero and os.path.isfile(os.path.join(path, "manifest.json")):
            shutil.rmtree(path, ignore_errors=True)
