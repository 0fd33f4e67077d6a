"""``LearningRateFinder``: a learning-rate range test at the start of ``fit`` (Lightning's arguments).

At ``on_fit_start`` (after the model, optimizer and data are prepared, before the sanity check) the callback:

1. snapshots, in host memory, everything a training step changes: model weights, optimizer state (including
   its learning rates), the precision's loss-scaler, the Accelerator's step counters, the training loader's
   position, the RNG streams and the trainer's loop counters and metrics;
2. runs ``num_training_steps`` optimizer steps of the ordinary training step (``training_step``, backward,
   clipping, ``optimizer_step``; gradient accumulation included) with the learning rate swept from ``min_lr``
   to ``max_lr`` (``mode="exponential"`` or ``"linear"``), with the other callbacks, the loggers and the LR
   schedulers held back; the loss of each step (mean over the window and over ranks) is smoothed
   exponentially (``beta=0.98``, bias-corrected) and recorded; the sweep stops early once the smoothed loss
   exceeds ``early_stop_threshold`` x its best value (or is not finite);
3. restores the snapshot, so training starts exactly as it would have without the sweep;
4. with ``update_attr=True``, sets the suggestion — the learning rate at the steepest descent of the
   smoothed loss, skipping the first 10 and the last point (Lightning's rule) — on the module attribute
   (``attr_name``, else ``lr`` or ``learning_rate``, on the module or in ``module.hparams``), on every
   optimizer parameter group (``lr``, and ``initial_lr`` where a scheduler set it) and as the ``base_lrs`` of
   the LR schedulers.

During the sweep ``trainer.global_step`` counts the sweep's steps (as Lightning); it is restored with the rest.
Reading each step's loss synchronises the device once per sweep step (only during the sweep). The snapshot
costs one host copy of the weights and optimizer state. The result is kept in checkpoints: a run resumed from
one does not sweep again. ``fast_dev_run`` skips the sweep.

>>> from ember.callbacks import LearningRateFinder
>>> finder = LearningRateFinder(min_lr=1e-5, max_lr=1.0, num_training_steps=3)
>>> [f"{lr:.0e}" for lr in finder.learning_rates()]
['1e-05', '3e-03', '1e+00']
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Generator, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch

from ember._errors import EmberConfigError, unknown_value
from ember._log import info as _log_info
from ember.callbacks.base import Callback
from ember.data import apply_to_tensors

if TYPE_CHECKING:
    from ember.trainer.module import Module
    from ember.trainer.trainer import Trainer


class LRFinderResult:
    """The sweep: ``results = {"lr": [...], "loss": [...]}`` (smoothed losses) and :meth:`suggestion`.

    >>> result = LRFinderResult("exponential", 1e-3, 1.0, 4)
    >>> result.results = {"lr": [0.001, 0.01, 0.1, 1.0], "loss": [1.0, 0.99, 0.5, 3.0]}
    >>> result.suggestion(skip_begin=0, skip_end=1)  # d loss / d lr is most negative at 0.1
    0.1
    """

    def __init__(self, mode: str, lr_min: float, lr_max: float, num_training: int) -> None:
        self.mode, self.lr_min, self.lr_max, self.num_training = mode, lr_min, lr_max, num_training
        self.results: dict[str, list[float]] = {"lr": [], "loss": []}
        self._optimal_idx: int | None = None

    def suggestion(self, skip_begin: int = 10, skip_end: int = 1) -> float | None:
        """The learning rate where the smoothed loss falls fastest (most negative d loss / d lr), ignoring the
        first ``skip_begin`` and last ``skip_end`` points; None (with a warning) when fewer than 2 remain."""
        end = len(self.results["loss"]) - skip_end
        losses = torch.tensor(self.results["loss"][skip_begin:end], dtype=torch.float64)
        lrs = torch.tensor(self.results["lr"][skip_begin:end], dtype=torch.float64)
        finite = torch.isfinite(losses)
        losses, lrs = losses[finite], lrs[finite]
        if len(losses) < 2:
            warnings.warn(
                f"LearningRateFinder: {len(self.results['loss'])} points are too few for a suggestion (skipping "
                f"{skip_begin} at the start and {skip_end} at the end leaves {len(losses)} finite ones). Raise "
                "num_training_steps, or use more training data.", stacklevel=2,
            )
            self._optimal_idx = None
            return None
        gradients = torch.gradient(losses, spacing=[lrs])[0]
        kept = torch.arange(len(self.results["loss"]))[skip_begin:end][finite]
        self._optimal_idx = int(kept[int(torch.argmin(gradients))])
        return self.results["lr"][self._optimal_idx]


class LearningRateFinder(Callback):
    """Run an LR range test when ``fit`` starts; see the module docstring.

    Args:
        min_lr, max_lr: The swept range (``min_lr > 0`` for ``mode="exponential"``).
        num_training_steps: Optimizer steps of the sweep (one learning rate each).
        mode: ``"exponential"`` (geometric spacing) or ``"linear"``.
        early_stop_threshold: Stop once the smoothed loss exceeds this multiple of its best; None: never.
        update_attr: Set the suggestion on the module attribute and the optimizer.
        attr_name: The module attribute (or ``hparams`` key) holding the LR; default ``lr`` or ``learning_rate``.

    After the sweep ``optimal_lr`` is an :class:`LRFinderResult` (``.results``, ``.suggestion()``).
    """

    SUPPORTED_MODES = ("linear", "exponential")
    BETA = 0.98

    def __init__(
        self,
        min_lr: float = 1e-8,
        max_lr: float = 1,
        num_training_steps: int = 100,
        mode: str = "exponential",
        early_stop_threshold: float | None = 4.0,
        update_attr: bool = True,
        attr_name: str = "",
    ) -> None:
        mode = str(mode).lower()
        if mode not in self.SUPPORTED_MODES:
            raise unknown_value("LearningRateFinder mode", mode, self.SUPPORTED_MODES)
        if not 0 <= min_lr < max_lr or (mode == "exponential" and min_lr <= 0):
            raise EmberConfigError(f"LearningRateFinder(min_lr={min_lr}, max_lr={max_lr}): need 0 < min_lr < max_lr "
                                   "(min_lr may be 0 only with mode='linear').")
        if isinstance(num_training_steps, bool) or not isinstance(num_training_steps, int) or num_training_steps < 1:
            raise EmberConfigError(f"LearningRateFinder(num_training_steps={num_training_steps!r}) must be an int >= 1.")
        if early_stop_threshold is not None and early_stop_threshold <= 0:
            raise EmberConfigError(f"LearningRateFinder(early_stop_threshold={early_stop_threshold}) must be > 0 or None.")
        self._min_lr, self._max_lr = float(min_lr), float(max_lr)
        self._num_training_steps = num_training_steps
        self._mode = mode
        self._early_stop_threshold = early_stop_threshold
        self._update_attr = update_attr
        self._attr_name = attr_name
        self.optimal_lr: LRFinderResult | None = None
        self._done = False

    def learning_rates(self) -> list[float]:
        """The learning rate of each sweep step."""
        n, lo, hi = self._num_training_steps, self._min_lr, self._max_lr
        if n == 1:
            return [lo]
        if self._mode == "linear":
            return [lo + (hi - lo) * i / (n - 1) for i in range(n)]
        return [lo * (hi / lo) ** (i / (n - 1)) for i in range(n)]

    # checks before any data or model work ------------------------------------------------------------
    def _attr(self, module: Module) -> str:
        names = [self._attr_name] if self._attr_name else ["lr", "learning_rate"]
        for name in names:
            if name in module.hparams or hasattr(module, name):
                return name
        raise EmberConfigError(
            f"LearningRateFinder(update_attr=True) found no {' or '.join(repr(n) for n in names)} on "
            f"{type(module).__name__} or in its hparams. Store the LR there (e.g. self.lr = lr, or "
            "save_hyperparameters()), pass attr_name=..., or update_attr=False."
        )

    def setup(self, trainer: Trainer, pl_module: Module, stage: str) -> None:
        if stage != "fit":
            return
        if not pl_module.automatic_optimization:
            raise EmberConfigError("LearningRateFinder needs automatic optimisation (it runs the training step "
                                   "with the Trainer's optimizer step); remove it for manual optimisation.")
        if self._update_attr:
            self._attr(pl_module)

    def on_fit_start(self, trainer: Trainer, pl_module: Module) -> None:
        self.lr_find(trainer, pl_module)

    # the sweep --------------------------------------------------------------------------------------
    def lr_find(self, trainer: Trainer, pl_module: Module) -> LRFinderResult | None:
        """Sweep, restore, and (``update_attr``) apply the suggestion. Every rank runs it."""
        if self._done:
            return self.optimal_lr
        if trainer.fast_dev_run:
            warnings.warn("LearningRateFinder: skipped because fast_dev_run is on.", stacklevel=2)
            return None
        if len(trainer.optimizers) != 1:
            raise EmberConfigError(f"LearningRateFinder sweeps one optimizer; configure_optimizers returned "
                                   f"{len(trainer.optimizers)}.")
        result = LRFinderResult(self._mode, self._min_lr, self._max_lr, self._num_training_steps)
        snapshot = _Snapshot(trainer, pl_module)
        batches = _batches(trainer)
        try:
            self._sweep(trainer, result, batches)
        finally:
            batches.close()  # releases the loader's iterator before its position is restored
            snapshot.restore()
        self.optimal_lr, self._done = result, True
        lr = result.suggestion()
        if self._update_attr and lr is not None:
            self._apply(trainer, pl_module, lr)
        if trainer.is_global_zero:
            where = f" (set as {self._attr(pl_module)!r})" if self._update_attr and lr is not None else ""
            _log_info(f"LearningRateFinder: {len(result.results['lr'])} steps from {self._min_lr:g}, "
                  f"suggested lr = {lr if lr is None else f'{lr:.3g}'}{where}")
        return result

    def _sweep(self, trainer: Trainer, result: LRFinderResult, batches: Iterator[tuple[int, Any]]) -> None:
        from ember.trainer import _loops

        acc, optimizer = trainer.accelerator, trainer.optimizers[0]
        avg = best = 0.0
        for i, lr in enumerate(self.learning_rates()):
            for group in optimizer.param_groups:
                group["lr"] = lr
            window: list[torch.Tensor] = []
            while True:
                batch_idx, batch = next(batches)
                trainer._metrics.train.begin_batch(batch)
                with acc.accumulate(_model(trainer)):
                    output = _loops.automatic_step(trainer, batch, batch_idx)
                if output is not None:
                    window.append(output["loss"].float())
                if acc.sync_gradients:
                    break
            mean = torch.stack(window).mean() if window else torch.tensor(float("nan"), device=acc.device)
            loss = float(trainer._reduce(mean, "mean"))  # one host read per sweep step
            avg = self.BETA * avg + (1 - self.BETA) * loss
            smoothed = avg / (1 - self.BETA ** (i + 1))
            if i == 0 or smoothed < best:
                best = smoothed
            result.results["lr"].append(lr)
            result.results["loss"].append(smoothed)
            threshold = self._early_stop_threshold
            if threshold is not None and (not math.isfinite(smoothed) or (i > 0 and smoothed > threshold * best)):
                break

    def _apply(self, trainer: Trainer, pl_module: Module, lr: float) -> None:
        name = self._attr(pl_module)
        if name in pl_module.hparams:
            pl_module.hparams[name] = lr
        if hasattr(pl_module, name) or name not in pl_module.hparams:
            setattr(pl_module, name, lr)
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = lr
                if "initial_lr" in group:
                    group["initial_lr"] = lr
        for config in trainer.lr_scheduler_configs:
            base = getattr(config.scheduler, "base_lrs", None)
            if isinstance(base, list):
                getattr(config.scheduler, "scheduler", config.scheduler).base_lrs = [lr] * len(base)

    # checkpoints --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self.optimal_lr is None:
            return {"done": self._done}
        plain = {k: [v if math.isfinite(v) else None for v in vals] for k, vals in self.optimal_lr.results.items()}
        return {"done": self._done, "results": plain}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._done = bool(state_dict.get("done", False))
        saved = state_dict.get("results")
        if saved is not None:
            result = LRFinderResult(self._mode, self._min_lr, self._max_lr, self._num_training_steps)
            result.results = {k: [math.nan if v is None else float(v) for v in vals] for k, vals in saved.items()}
            self.optimal_lr = result


def _model(trainer: Trainer) -> torch.nn.Module:
    wrapped = trainer._wrapped
    assert wrapped is not None
    return wrapped


def _batches(trainer: Trainer) -> Generator[tuple[int, Any], None, None]:
    """Training batches for the sweep: the prepared loader, again and again (its position is restored later)."""
    loader = trainer._train_loader
    assert loader is not None
    index = 0
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield index, batch
            index += 1
        if empty:
            raise EmberConfigError("LearningRateFinder: the training dataloader is empty.")


def _host_copy(obj: Any) -> Any:
    return apply_to_tensors(obj, lambda t: t.detach().to("cpu", copy=True))


class _Snapshot:
    """Everything the sweep changes, copied to host memory, and put back by :meth:`restore`."""

    def __init__(self, trainer: Trainer, module: Module) -> None:
        acc, wrapped = trainer.accelerator, trainer._wrapped
        assert wrapped is not None
        self.trainer, self.module, self.wrapped = trainer, module, wrapped
        self.model = _host_copy(acc.strategy.model_state_dict(wrapped))
        self.optimizers = [_host_copy(opt.optimizer.state_dict()) for opt in trainer.optimizers]
        self.optimizer_lrs = [[g["lr"] for g in opt.param_groups] for opt in trainer.optimizers]
        self.precision = copy.deepcopy(acc.precision.state_dict())
        state = acc.gradient_state
        self.gradient = (state.optimizer_steps, state.skipped_steps)
        loader = trainer._train_loader
        self.loader = loader.state_dict() if loader is not None else None
        from ember._state import rng_state

        self.rng = rng_state(acc.device)
        self.loop = replace(trainer._loop)
        hub = trainer._metrics
        self.metrics = (dict(hub.callback_metrics), dict(hub.logged_metrics), dict(hub.progress_bar_metrics))
        self.training = [(m, m.training) for m in module.modules()]
        self.callbacks, self.schedulers = trainer.callbacks, trainer._scheduler_configs
        trainer.callbacks, trainer._scheduler_configs = [], []  # held back during the sweep
        trainer._hooks.reset()

    def restore(self) -> None:
        trainer, acc = self.trainer, self.trainer.accelerator
        trainer.callbacks, trainer._scheduler_configs = self.callbacks, self.schedulers
        trainer._hooks.reset()
        acc.strategy.load_model_state_dict(self.wrapped, self.model)
        for opt, state, lrs in zip(trainer.optimizers, self.optimizers, self.optimizer_lrs):
            opt.optimizer.load_state_dict(state)
            for group, lr in zip(opt.param_groups, lrs):
                group["lr"] = lr
            opt.optimizer.zero_grad(set_to_none=True)
        acc.precision.load_state_dict(self.precision)
        state = acc.gradient_state
        state.optimizer_steps, state.skipped_steps = self.gradient
        state.end_window()
        state.sync_gradients, state.end_of_dataloader = True, False
        if trainer._train_loader is not None and self.loader is not None:
            trainer._train_loader.load_state_dict(self.loader)
        from ember._state import set_rng_state

        set_rng_state(self.rng, acc.device)
        trainer._loop = self.loop
        hub = trainer._metrics
        hub.train.reset()
        for current, saved in zip((hub.callback_metrics, hub.logged_metrics, hub.progress_bar_metrics), self.metrics):
            current.clear()
            current.update(saved)
        for module, training in self.training:
            module.training = training
        trainer.should_stop = False
