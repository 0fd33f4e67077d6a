"""``ThroughputMonitor``: samples/s, batches/s, tokens/s, TFLOP/s and MFU of training, logged at log intervals.

ember's own design, inspired by Lightning's. What it logs (through ``self.log`` on the module, so the values go
wherever the trainer sends metrics: the loggers every ``log_every_n_steps`` optimizer steps, ``callback_metrics``,
and the progress bar with ``prog_bar=True``)::

    train/batches_per_sec        micro-batches per second, all ranks together (per-rank rate x world size)
    train/samples_per_sec        samples per second, all ranks (``batch_size_fn`` or the batch's leading dim)
    train/tokens_per_sec         tokens per second, all ranks (``length_fn``, or ``input_ids.numel()``)
    train/device/tflops_per_sec  achieved TFLOP/s of one device (``flops_per_batch`` x batches / time)
    train/device/mfu             model FLOPs utilisation: device FLOP/s / ``available_flops``

**No host synchronisation per step.** Per batch the monitor only adds integers read from tensor shapes. At a
log interval it synchronises CUDA once, reads ``time.perf_counter()`` and divides: the rates cover the
wall time since the previous log interval, without validation (validation pauses the clock). The first
optimizer step of a fit (warm-up, and the FLOP measurement below) is not timed.

**FLOPs per batch.** ``flops_per_batch`` is what one training micro-batch costs on one device, forward and
backward. Give it, or leave it None and the monitor measures it once with
:class:`torch.utils.flop_counter.FlopCounterMode` around the first training batch (``training_step`` with its
backward: matrix multiplications, convolutions and attention are counted; element-wise work is not). If you
estimate it from a forward count instead (e.g. ``2 * n_params * tokens`` for a transformer), multiply by 3:
the backward pass costs about twice the forward (one product for the gradients of the activations, one for
the gradients of the weights) — the "x3 rule". :func:`measure_flops` counts a function of your choice.

**Peak FLOP/s.** ``available_flops`` is the device's peak (FLOP/s). Without it, on CUDA the monitor looks up
the dense peak of known GPUs for the trainer's precision (bf16/fp16 tensor cores, TF32 when float32 matmuls
may use it, else FP32; see :data:`PEAK_FLOPS`); MFU is not reported on other devices (CPU) unless given.

>>> from ember.callbacks import ThroughputMonitor
>>> monitor = ThroughputMonitor(flops_per_batch=3 * 2 * 124e6 * 8 * 1024, available_flops=989.4e12)
>>> round(monitor.flops_per_batch / 1e12, 2)  # TFLOPs per batch of 8 x 1024 tokens for a 124M model
6.09
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from ember._errors import EmberConfigError
from ember.callbacks.base import Callback
from ember.data import find_batch_size

if TYPE_CHECKING:
    from torch.utils.flop_counter import FlopCounterMode

    from ember.trainer.module import Module
    from ember.trainer.trainer import Trainer

#: Dense peak FLOP/s per GPU (NVIDIA datasheets, without structured sparsity), by compute type.
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "h200": {"bf16": 989.4e12, "fp16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12},  # H200 SXM
    "h100 sxm": {"bf16": 989.4e12, "fp16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12},
    "h100 pcie": {"bf16": 756.5e12, "fp16": 756.5e12, "tf32": 378.0e12, "fp32": 51.2e12},
    "a100": {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
}


def compute_type(precision: str) -> str | None:
    """The tensor-core type a precision's matmuls run in: "bf16", "fp16", "tf32", "fp32" or None (fp64).

    >>> compute_type("bf16-mixed"), compute_type("16-mixed"), compute_type("64-true")
    ('bf16', 'fp16', None)
    """
    if "bf16" in precision:
        return "bf16"
    if "16" in precision:
        return "fp16"
    if "64" in precision:
        return None
    return "fp32" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def peak_flops(device: torch.device, precision: str) -> float | None:
    """Dense peak FLOP/s of ``device`` for ``precision`` from :data:`PEAK_FLOPS`; None when unknown or not CUDA."""
    kind = compute_type(precision)
    if device.type != "cuda" or kind is None:
        return None
    name = torch.cuda.get_device_name(device).lower()
    if "h200" in name:
        chip = "h200"
    elif "h100" in name:
        chip = "h100 pcie" if "pcie" in name else "h100 sxm" if "nvl" not in name else ""
    elif "a100" in name:
        chip = "a100"
    else:
        chip = ""
    return PEAK_FLOPS[chip][kind] if chip else None


def measure_flops(forward: Callable[[], torch.Tensor], backward: bool = True) -> int:
    """FLOPs counted by ``FlopCounterMode`` for ``forward()`` (and ``forward().sum().backward()`` if ``backward``).

    Works on the ``meta`` device, so a large model costs nothing to count::

    >>> import torch
    >>> layer = torch.nn.Linear(16, 8)
    >>> measure_flops(lambda: layer(torch.randn(4, 16)))  # 2*4*16*8 forward + 2*4*16*8 weight gradient
    2048
    """
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        out = forward()
        if backward:
            out.sum().backward()  # type: ignore[no-untyped-call]
    return int(counter.get_total_flops())


class ThroughputMonitor(Callback):
    """Log training throughput (and FLOP/s, MFU) at the trainer's log intervals; see the module docstring.

    Args:
        batch_size_fn: Samples in a batch (default: the leading dimension, :func:`ember.data.find_batch_size`).
        length_fn: Tokens (items) in a batch; default ``batch["input_ids"].numel()`` when the batch is a mapping
            with ``input_ids`` (padding included), else no tokens/s.
        flops_per_batch: FLOPs of one training micro-batch, forward + backward, on one device. None: measured on
            the first training batch (``measure_flops=False`` turns that off, e.g. under ``torch.compile``).
        available_flops: Peak FLOP/s of one device, for MFU. None: looked up for known CUDA GPUs.
        prog_bar: Also show the values in the progress bar.
        separator: Between the parts of the logged names.
    """

    def __init__(
        self,
        batch_size_fn: Callable[[Any], int] | None = None,
        length_fn: Callable[[Any], int] | None = None,
        flops_per_batch: float | None = None,
        available_flops: float | None = None,
        measure_flops: bool = True,
        prog_bar: bool = False,
        separator: str = "/",
    ) -> None:
        for name, value in (("flops_per_batch", flops_per_batch), ("available_flops", available_flops)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
                raise EmberConfigError(f"ThroughputMonitor({name}={value!r}) must be a number > 0 or None.")
        self.batch_size_fn = batch_size_fn
        self.length_fn = length_fn
        self.flops_per_batch = None if flops_per_batch is None else float(flops_per_batch)
        self.available_flops = None if available_flops is None else float(available_flops)
        self._user_peak = self.available_flops is not None
        self.measure = measure_flops
        self.prog_bar = prog_bar
        self.separator = separator
        self.metrics: dict[str, float] = {}  # the values logged last
        self._counter: FlopCounterMode | None = None
        self._reset_interval(None)

    def _reset_interval(self, mark: float | None) -> None:
        self._batches = self._samples = self._tokens = 0
        self._has_samples = self._has_tokens = False
        self._elapsed = 0.0
        self._mark = mark  # perf_counter() when the running segment began; None before the first step / paused
        self._timing = mark is not None

    # setup --------------------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: Module, stage: str) -> None:
        if stage != "fit":
            return
        if not self._user_peak:
            self.available_flops = peak_flops(trainer.accelerator.device, trainer.precision)
        self._reset_interval(None)

    def _now(self, trainer: Trainer) -> float:
        device = trainer.accelerator.device
        if device.type == "cuda":  # only at log intervals and validation boundaries
            torch.cuda.synchronize(device)
        return time.perf_counter()

    # training -----------------------------------------------------------------------------------------
    def on_train_batch_start(self, trainer: Trainer, pl_module: Module, batch: Any, batch_idx: int) -> None:
        if self.flops_per_batch is None and self.measure and self._counter is None:
            from torch.utils.flop_counter import FlopCounterMode

            self._counter = FlopCounterMode(display=False)
            self._counter.__enter__()  # type: ignore[no-untyped-call]

    def _stop_counting(self) -> None:
        counter, self._counter = self._counter, None
        if counter is not None:
            counter.__exit__(None, None, None)  # type: ignore[no-untyped-call]
            self.flops_per_batch = float(counter.get_total_flops()) or None
            self.measure = False  # once

    def on_train_batch_end(self, trainer: Trainer, pl_module: Module, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._stop_counting()
        if self._mark is not None:
            self._count(batch)
        if not (trainer.accelerator.sync_gradients or not pl_module.automatic_optimization):
            return  # inside an accumulation window
        if not self._timing:  # the first optimizer step of the fit ends: start the clock
            self._reset_interval(self._now(trainer))
            return
        from ember.trainer._loops import should_update_logs

        if self._mark is not None and should_update_logs(trainer):
            self._log(trainer, pl_module)

    def _count(self, batch: Any) -> None:
        self._batches += 1
        samples = self.batch_size_fn(batch) if self.batch_size_fn is not None else find_batch_size(batch)
        if samples is not None:
            self._samples += int(samples)
            self._has_samples = True
        if self.length_fn is not None:
            tokens: int | None = int(self.length_fn(batch))
        else:
            ids = batch.get("input_ids") if isinstance(batch, Mapping) else None
            tokens = ids.numel() if isinstance(ids, torch.Tensor) else None
        if tokens is not None:
            self._tokens += tokens
            self._has_tokens = True

    def compute(self, elapsed: float, world_size: int) -> dict[str, float]:
        """The metrics for the current interval's counts over ``elapsed`` seconds."""
        sep = self.separator
        out = {f"train{sep}batches_per_sec": self._batches / elapsed * world_size}
        if self._has_samples:
            out[f"train{sep}samples_per_sec"] = self._samples / elapsed * world_size
        if self._has_tokens:
            out[f"train{sep}tokens_per_sec"] = self._tokens / elapsed * world_size
        if self.flops_per_batch is not None:
            device_flops = self.flops_per_batch * self._batches / elapsed
            out[f"train{sep}device{sep}tflops_per_sec"] = device_flops / 1e12
            if self.available_flops:
                out[f"train{sep}device{sep}mfu"] = device_flops / self.available_flops
        return out

    def _log(self, trainer: Trainer, pl_module: Module) -> None:
        assert self._mark is not None
        now = self._now(trainer)
        elapsed = self._elapsed + now - self._mark
        if self._batches and elapsed > 0:
            self.metrics = self.compute(elapsed, trainer.world_size)
            for name, value in self.metrics.items():
                pl_module.log(name, value, prog_bar=self.prog_bar, on_step=True, on_epoch=False)
        self._reset_interval(now)

    # validation pauses the clock ----------------------------------------------------------------------
    def on_validation_start(self, trainer: Trainer, pl_module: Module) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking and self._mark is not None:
            self._elapsed += self._now(trainer) - self._mark
            self._mark = None

    def on_validation_end(self, trainer: Trainer, pl_module: Module) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking and self._timing and self._mark is None:
            self._mark = self._now(trainer)

    def on_exception(self, trainer: Trainer, pl_module: Module, exception: BaseException) -> None:
        counter, self._counter = self._counter, None
        if counter is not None:
            counter.__exit__(None, None, None)  # type: ignore[no-untyped-call]

    # checkpoints: a resumed run does not measure again ------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"flops_per_batch": self.flops_per_batch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("flops_per_batch")
        if self.flops_per_batch is None and saved is not None:
            self.flops_per_batch = float(saved)
