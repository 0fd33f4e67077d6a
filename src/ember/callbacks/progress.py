"""Progress bars that refresh on time, not per step.

On a terminal the bar is redrawn at most ``refresh_rate`` times a second (default 10); otherwise (logs,
CI, a pipe) it prints one line per epoch. Each refresh reads the progress-bar metrics (device tensors) once —
between refreshes nothing touches the device. Shown: batches done, it/s, tokens/s when batches carry
``input_ids`` (counted from shapes, no sync), the training loss and every ``self.log(..., prog_bar=True)``.

``ProgressBar`` prints plain text; ``TQDMProgressBar`` draws with tqdm and ``RichProgressBar`` with rich
when the stream is a terminal. ``default_progress_bar()`` picks rich when installed.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TextIO

import torch

from ember.callbacks.base import Callback

if TYPE_CHECKING:
    from ember.trainer.module import Module
    from ember.trainer.trainer import Trainer


def _count_tokens(batch: Any) -> int:
    ids = batch.get("input_ids") if isinstance(batch, Mapping) else None
    return int(ids.numel()) if isinstance(ids, torch.Tensor) else 0


def _fmt(value: float) -> str:
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.3e}"


class ProgressBar(Callback):
    """Plain-text progress: a redrawn line on a terminal (≤ ``refresh_rate`` Hz), one line per epoch otherwise."""

    def __init__(self, refresh_rate: float = 10.0, stream: TextIO | None = None, leave: bool = True) -> None:
        if refresh_rate <= 0:
            raise ValueError(f"refresh_rate={refresh_rate} must be > 0 (refreshes per second).")
        self.refresh_rate = refresh_rate
        self.leave = leave
        self._stream = stream
        self._enabled = True
        self._active = False
        self._interactive = False
        self._reset()

    def _reset(self) -> None:
        self._batches = 0
        self._tokens = 0
        self._start = time.monotonic()
        self._last_refresh = self._start
        self._loss: Any = None

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stdout

    @property
    def is_enabled(self) -> bool:
        return self._enabled and self._active

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def get_metrics(self, trainer: Trainer, pl_module: Module) -> dict[str, float]:
        """What the bar shows: the loss and the progress-bar metrics, read from the device once."""
        from ember.trainer.logging import to_floats

        values: dict[str, Any] = {}
        if isinstance(self._loss, torch.Tensor):
            values["loss"] = self._loss
        values.update(trainer.progress_bar_metrics)
        return to_floats(values)

    # hooks ----------------------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: Module, stage: str) -> None:
        self._active = trainer.is_global_zero
        isatty = getattr(self.stream, "isatty", None)
        self._interactive = bool(isatty()) if callable(isatty) else False

    def on_train_epoch_start(self, trainer: Trainer, pl_module: Module) -> None:
        self._reset()
        if self.is_enabled and self._interactive:
            self._open(trainer)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: Module, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._batches += 1
        self._tokens += _count_tokens(batch)
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, torch.Tensor):
            self._loss = loss
        if not (self.is_enabled and self._interactive):
            return
        now = time.monotonic()
        if now - self._last_refresh >= 1.0 / self.refresh_rate:
            self._last_refresh = now
            self._draw(trainer, pl_module, final=False)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: Module) -> None:
        if self.is_enabled:
            self._draw(trainer, pl_module, final=True)
            self._close()

    def on_validation_end(self, trainer: Trainer, pl_module: Module) -> None:
        if self.is_enabled and trainer.state.fn in ("validate", "test"):
            metrics = ", ".join(f"{k}={_fmt(v)}" for k, v in self.get_metrics(trainer, pl_module).items()
                                if k != "loss")
            self.stream.write(f"{trainer.state.fn.capitalize()}: {metrics}\n")
            self.stream.flush()

    on_test_end = on_validation_end

    # rendering (overridden by the tqdm / rich bars) -----------------------------------------------------
    def _describe(self, trainer: Trainer, pl_module: Module) -> tuple[str, str]:
        elapsed = max(time.monotonic() - self._start, 1e-9)
        total = trainer.num_training_batches
        done = f"{self._batches}/{int(total)}" if total != float("inf") else str(self._batches)
        rates = f"{self._batches / elapsed:.2f} it/s"
        if self._tokens:
            rates += f", {self._tokens / elapsed:,.0f} tok/s"
        metrics = ", ".join(f"{k}={_fmt(v)}" for k, v in self.get_metrics(trainer, pl_module).items())
        return f"Epoch {trainer.current_epoch}", f"{done} [{elapsed:.1f}s, {rates}]" + (f" {metrics}" if metrics else "")

    def _open(self, trainer: Trainer) -> None:
        pass

    def _draw(self, trainer: Trainer, pl_module: Module, final: bool) -> None:
        title, body = self._describe(trainer, pl_module)
        if self._interactive:
            end = "\n" if final and self.leave else ""
            self.stream.write(f"\r\x1b[2K{title}: {body}{end}")
        else:
            self.stream.write(f"{title}: {body}\n")
        self.stream.flush()

    def _close(self) -> None:
        pass


class TQDMProgressBar(ProgressBar):
    """tqdm on a terminal (updated only at the refresh rate); plain lines otherwise."""

    def __init__(self, refresh_rate: float = 10.0, stream: TextIO | None = None, leave: bool = True) -> None:
        super().__init__(refresh_rate, stream, leave)
        self._bar: Any = None

    def _open(self, trainer: Trainer) -> None:
        if importlib.util.find_spec("tqdm") is None:
            return
        from tqdm import tqdm

        total = trainer.num_training_batches
        self._bar = tqdm(total=None if total == float("inf") else int(total), desc=f"Epoch {trainer.current_epoch}",
                         file=self.stream, leave=self.leave, dynamic_ncols=True, mininterval=0.0, smoothing=0.0)

    def _draw(self, trainer: Trainer, pl_module: Module, final: bool) -> None:
        if self._bar is None:
            super()._draw(trainer, pl_module, final)
            return
        self._bar.n = self._batches
        self._bar.set_postfix({k: _fmt(v) for k, v in self.get_metrics(trainer, pl_module).items()}, refresh=False)
        self._bar.refresh()

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class RichProgressBar(ProgressBar):
    """rich on a terminal (redrawn only at the refresh rate); plain lines otherwise."""

    def __init__(self, refresh_rate: float = 10.0, stream: TextIO | None = None, leave: bool = True) -> None:
        super().__init__(refresh_rate, stream, leave)
        self._progress: Any = None
        self._task: Any = None

    def _open(self, trainer: Trainer) -> None:
        if importlib.util.find_spec("rich") is None:
            return
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        total = trainer.num_training_batches
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(), TextColumn("{task.fields[info]}"),
            console=Console(file=self.stream), auto_refresh=False, transient=not self.leave,
        )
        self._progress.start()
        self._task = self._progress.add_task(
            f"Epoch {trainer.current_epoch}", total=None if total == float("inf") else int(total), info=""
        )

    def _draw(self, trainer: Trainer, pl_module: Module, final: bool) -> None:
        if self._progress is None:
            super()._draw(trainer, pl_module, final)
            return
        _, body = self._describe(trainer, pl_module)
        self._progress.update(self._task, completed=self._batches, info=body.split("] ", 1)[-1])
        self._progress.refresh()

    def _close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def default_progress_bar() -> ProgressBar:
    """rich when installed, else the plain bar (both print one line per epoch when not on a terminal)."""
    if importlib.util.find_spec("rich") is not None:
        return RichProgressBar()
    return ProgressBar()
