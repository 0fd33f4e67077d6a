"""The loops: fit → training epoch → training batch, evaluation and prediction.

Everything backend-specific (precision, DDP, accumulation windows, loss scaling, clipping) happens inside
the Accelerator calls; the loops only order the hooks around them.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ember._errors import EmberConfigError
from ember._log import info as _log_info
from ember.strategies.base import ForwardRedirection
from ember.trainer.logging import to_floats

if TYPE_CHECKING:
    from ember.data import DeviceLoader
    from ember.trainer.trainer import Trainer


# ----------------------------------------------------------------------------------------------------
# fit
# ----------------------------------------------------------------------------------------------------
def fit_loop(t: Trainer) -> None:
    """Sanity check, then epochs until max_epochs / max_steps / should_stop (``max_time`` is a Timer callback)."""
    t._metrics.active, t.state.stage = t._metrics.train, "train"
    t._hooks.call("on_fit_start")
    sanity_check(t)
    t._hooks.call("on_train_start")
    while not fit_done(t):
        with t.profiler.profile("run_training_epoch"):
            train_epoch(t)
    t._hooks.call("on_train_end")
    t._hooks.call("on_fit_end")


def train_epoch(t: Trainer) -> None:
    """One pass over the training data (resumes mid-epoch after ``fit(ckpt_path=...)``)."""
    acc, loop, loader = t.accelerator, t._loop, t._train_loader
    assert loader is not None and t._module is not None
    start_epoch(t, loader)
    iterator = iter(loader) if t.num_training_batches > loop.batch_idx else iter(())
    if t._profiling:
        iterator = profiled_batches(t, iterator)
    try:
        for batch in iterator:
            is_last = loader.end_of_dataloader or loop.batch_idx + 1 >= t.num_training_batches
            loop.is_last_batch = is_last
            with t.profiler.profile("run_training_batch"):
                keep_going = train_batch(t, batch, loop.batch_idx, is_last)
            if not keep_going:
                break
            if should_validate(t):
                run_validation(t)
            if acc.sync_gradients or not t._module.automatic_optimization:
                step_schedulers(t, "step", plateau=True)
                if acc.preempted():  # every rank agrees at this step boundary
                    preempt(t)
            if is_last or stop_now(t):
                break
        else:
            loop.epoch_finished = True
    finally:
        _close(iterator)
    end_epoch(t)


def profiled_batches(t: Trainer, iterator: Iterator[Any]) -> Iterator[Any]:
    """With a profiler: the wait for each training batch, as "[_TrainingEpochLoop].train_dataloader_next"."""
    try:
        while True:
            with t.profiler.profile("[_TrainingEpochLoop].train_dataloader_next"):
                batch = next(iterator, _MISSING)
            if batch is _MISSING:
                return
            yield batch
    finally:
        _close(iterator)


def train_batch(t: Trainer, batch: Any, batch_idx: int, is_last: bool) -> bool:
    """One micro-batch; returns False when ``on_train_batch_start`` asked to skip the rest of the epoch."""
    acc, module, wrapped, loop = t.accelerator, t._module, t._wrapped, t._loop
    assert module is not None and wrapped is not None
    loop.log_step = loop.batches_that_stepped  # this batch's logs go to the index of its optimizer step
    t._metrics.train.begin_batch(batch)
    if t._hooks.call("on_train_batch_start", batch, batch_idx) == -1:
        return False
    if is_last:  # a limit_train_batches cut: the partial accumulation window still steps
        acc.gradient_state.end_of_dataloader = True
    with acc.accumulate(wrapped):
        if module.automatic_optimization:
            outputs = automatic_step(t, batch, batch_idx)
        else:
            outputs = run_step(t, "training_step", batch, batch_idx)
    stepped = acc.sync_gradients or not module.automatic_optimization
    if is_last and module.automatic_optimization:
        step_schedulers(t, "epoch", plateau=False)
    # the batch is done: counters first, so a checkpoint taken in on_train_batch_end resumes after it
    loop.batch_idx, loop.total_batches, loop.epoch_finished = batch_idx + 1, loop.total_batches + 1, is_last
    loop.batches_that_stepped += int(stepped)
    t._hooks.call("on_train_batch_end", outputs, batch, batch_idx)
    if stepped and should_update_logs(t):
        send(t, t._metrics.step_log(t._metrics.train))
    return True


def automatic_step(t: Trainer, batch: Any, batch_idx: int) -> Any:
    """training_step → backward → at a window boundary the optimizer step.

    ``training_step`` returning None skips the batch's backward, as in Lightning: at a window boundary the window
    still steps with the gradients its other micro-batches accumulated (each was scaled by 1/K, so the skipped
    one simply adds nothing) and zero_grad runs, so nothing leaks into the next window; a window in which every
    micro-batch was skipped has no gradients and is dropped (no optimizer or scheduler step). With several
    processes a skip is refused, as Lightning does: DDP needs every rank's backward.
    """
    output = run_step(t, "training_step", batch, batch_idx)
    loss = training_loss(output)
    if loss is None:
        if t.world_size > 1:
            raise EmberConfigError(
                f"training_step returned None (skip the batch) at batch {batch_idx} in a {t.world_size}-process run: "
                "every process must run backward for DDP's gradient sync. Return a loss on every rank (e.g. "
                "loss * 0 for a batch to ignore)."
            )
        if t.accelerator.sync_gradients and t._loop.window_has_grads:
            optimizer_step(t, batch_idx)
        return None
    backward(t, loss)
    if t.accelerator.sync_gradients:
        optimizer_step(t, batch_idx)
    extras = {k: v for k, v in output.items() if k != "loss"} if isinstance(output, dict) else {}
    return {"loss": loss.detach(), **extras}


def optimizer_step(t: Trainer, batch_idx: int) -> None:
    """At the end of an accumulation window: unscale, hooks, clip, step, step-schedulers, zero_grad."""
    optimizer, hooks = t._optimizers[0], t._hooks
    t.accelerator.unscale_gradients()
    hooks.call("on_before_optimizer_step", optimizer)
    if t.gradient_clip_val or hooks.overridden("configure_gradient_clipping"):
        hooks.module("configure_gradient_clipping", optimizer, t.gradient_clip_val, t.gradient_clip_algorithm,
                     force=True)
    hooks.module("optimizer_step", t.current_epoch, batch_idx, optimizer, None, force=True)
    step_schedulers(t, "step", plateau=False)
    hooks.call("on_before_zero_grad", optimizer)
    hooks.module("optimizer_zero_grad", t.current_epoch, batch_idx, optimizer, force=True)
    t._loop.window_has_grads = False


def backward(t: Trainer, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
    t._loop.window_has_grads = True
    t._hooks.call("on_before_backward", loss)
    t._hooks.module("backward", loss, *args, force=True, **kwargs)
    t._hooks.call("on_after_backward")


def clip_gradients(t: Trainer, optimizer: Any, value: float | None, algorithm: str | None) -> None:
    if value is None or value == 0:
        return
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if (algorithm or "norm") == "value":
        t.accelerator.clip_grad_value_(params, value)
    else:
        t.accelerator.clip_grad_norm_(params, value)


def training_loss(output: Any) -> torch.Tensor | None:
    if output is None or isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict) and isinstance(output.get("loss"), torch.Tensor):
        loss: torch.Tensor = output["loss"]
        return loss
    raise EmberConfigError(
        f"training_step returned {type(output).__name__}; with automatic optimisation it must return the loss "
        "tensor, a dict with a 'loss' tensor, or None to skip the batch."
    )


def start_epoch(t: Trainer, loader: DeviceLoader) -> None:
    loop = t._loop
    if loop.resume_batches is None:
        loader.set_epoch(loop.epoch)
        loop.batch_idx = 0
    else:
        loop.batch_idx, loop.resume_batches = loop.resume_batches, None
    loop.epoch_finished = loop.is_last_batch = False
    t._metrics.train.reset()
    t._metrics.active, t.state.stage = t._metrics.train, "train"
    t._hooks.call("on_train_epoch_start")


def end_epoch(t: Trainer) -> None:
    """Epoch values (before the hooks, then again for what the module logs in on_train_epoch_end)."""
    metrics, loop = t._metrics, t._loop
    loop.log_step = loop.batches_that_stepped
    logged = metrics.epoch_log(metrics.train)
    t._hooks.call_monitored("on_train_epoch_end", before_monitors=lambda: logged.update(metrics.epoch_log(metrics.train)))
    send(t, logged)
    for logger in t.loggers if t.is_global_zero else []:
        logger.save()
    if loop.epoch_finished:
        step_schedulers(t, "epoch", plateau=True)
    loop.epoch, loop.batch_idx, loop.epoch_finished = loop.epoch + 1, 0, False


def preempt(t: Trainer) -> None:
    """A preemption signal reached some rank: every rank saves this step, then the job exits with status 75."""
    from ember import checkpoint as ckpt
    from ember.trainer import _checkpoint

    dirs = [cb.dirpath for cb in t.checkpoint_callbacks if getattr(cb, "dirpath", None)]
    root = Path(dirs[0]) if dirs else Path(t.default_root_dir) / "checkpoints"
    path = _checkpoint.save(t, root / ckpt.step_dir_name(t.global_step))
    if t.is_global_zero:
        _log_info(f"preempted: saved {path} at step {t.global_step}; exiting with status 75. Run the same "
                  "command with fit(..., ckpt_path='last') to continue.")
    t.accelerator.exit_preempted()


def step_schedulers(t: Trainer, interval: str, plateau: bool) -> None:
    """Step the schedulers of ``interval`` (Lightning's ``frequency``; ReduceLROnPlateau gets its metric)."""
    module = t._module
    if module is None or not module.automatic_optimization:
        return
    for config in t._scheduler_configs:
        if config.interval != interval or config.reduce_on_plateau != plateau:
            continue
        index = t._loop.log_step + 1 if interval == "step" else t._loop.epoch + 1
        if index % config.frequency:
            continue
        metric = None
        if config.reduce_on_plateau:
            value = t.callback_metrics.get(str(config.monitor))
            if value is None:
                message = (f"ReduceLROnPlateau monitors {config.monitor!r}, which was not logged. Logged metrics: "
                           f"{sorted(t.callback_metrics)}. Set 'monitor' in the lr_scheduler config.")
                if config.strict:
                    raise EmberConfigError(message)
                warnings.warn(message, stacklevel=2)
                continue
            metric = float(value)
        t._hooks.module("lr_scheduler_step", config.scheduler, metric, force=True)


def fit_done(t: Trainer) -> bool:
    loop = t._loop
    if t.max_steps != -1 and t.global_step >= t.max_steps:
        return True
    if t.max_epochs != -1 and loop.epoch >= t.max_epochs:
        return True
    return t.should_stop and can_stop_early(t)


def stop_now(t: Trainer) -> bool:
    if t.max_steps != -1 and t.global_step >= t.max_steps:
        return True
    return t.should_stop and can_stop_early(t)


def can_stop_early(t: Trainer) -> bool:
    return t._loop.epoch >= t.min_epochs and t.global_step >= t.min_steps


def should_update_logs(t: Trainer) -> bool:
    n = t.log_every_n_steps
    return n > 0 and ((t._loop.log_step + 1) % n == 0 or t.should_stop)


def send(t: Trainer, metrics: dict[str, Any]) -> None:
    """Hand logged values to the loggers as floats (one host read), on the global rank 0."""
    if not metrics or not t.loggers or not t.is_global_zero:
        return
    values = to_floats(metrics)
    values.setdefault("epoch", float(t.current_epoch))
    if t.accelerator.skipped_steps:  # steps dropped by nonfinite="skip" or fp16 overflow are visible in the logs
        values["skipped_steps"] = float(t.accelerator.skipped_steps)
    for logger in t.loggers:
        logger.log_metrics(values, step=t._loop.log_step)


def run_step(t: Trainer, name: str, *args: Any) -> Any:
    """Call ``module.<name>`` under autocast; with gradients, through the strategy's wrapper (DDP)."""
    module, wrapped, acc = t._module, t._wrapped, t.accelerator
    with t._hooks.fx(name):
        redirected = isinstance(acc.strategy, ForwardRedirection)
        if not acc.precision.uses_autocast:
            return _call_step(module, wrapped, name, args, redirected)
        with acc.autocast():
            return _call_step(module, wrapped, name, args, redirected)


def _call_step(module: Any, wrapped: Any, name: str, args: tuple[Any, ...], redirected: bool) -> Any:
    """Steps with gradients run as the wrapper's forward when the strategy needs it (DDP, FSDP, DeepSpeed)."""
    if not redirected or wrapped is None or module is None or not torch.is_grad_enabled():
        return getattr(module, name)(*args)
    return redirect(wrapped, module, name, args)


_MISSING = object()


def redirect(wrapper: torch.nn.Module, module: torch.nn.Module, name: str, args: tuple[Any, ...]) -> Any:
    """Run ``module.<name>(*args)`` as the wrapper's forward (so DDP prepares its gradient reduction);
    the module's own ``forward`` is back in place before the step runs."""
    method = getattr(module, name)
    saved = module.__dict__.get("forward", _MISSING)

    def restore() -> None:
        if saved is _MISSING:
            module.__dict__.pop("forward", None)
        else:
            module.__dict__["forward"] = saved

    def forward(*a: Any, **k: Any) -> Any:
        restore()
        return method(*a, **k)

    module.__dict__["forward"] = forward
    try:
        return wrapper(*args)
    finally:
        restore()


# ----------------------------------------------------------------------------------------------------
# evaluation and prediction
# ----------------------------------------------------------------------------------------------------
def should_validate(t: Trainer) -> bool:
    loop, every_n = t._loop, t.check_val_every_n_epoch
    if not t._eval_loaders or not any(t._num_eval_batches):
        return False
    if every_n is not None and (loop.epoch + 1) % every_n:
        return False
    interval = t.val_check_interval
    if isinstance(interval, int):
        return (loop.total_batches if every_n is None else loop.batch_idx) % interval == 0
    if t.num_training_batches == math.inf:
        return loop.epoch_finished
    return loop.batch_idx % max(1, int(t.num_training_batches * interval)) == 0 or loop.epoch_finished


def sanity_check(t: Trainer) -> None:
    if not t._eval_loaders or t.num_sanity_val_steps == 0 or not any(t.num_sanity_val_batches):
        return
    t._hooks.callbacks("on_sanity_check_start")
    run_validation(t, sanity=True)
    t._hooks.callbacks("on_sanity_check_end")


def run_validation(t: Trainer, sanity: bool = False) -> None:
    """Validation inside fit; sanity-check results are discarded (as Lightning)."""
    previous = t.state.stage
    t.state.stage = "sanity_check" if sanity else "validate"
    limits = t.num_sanity_val_batches if sanity else list(t._num_eval_batches)
    try:
        send(t, eval_epoch(t, "validation", limits, record=not sanity))
    finally:
        t.state.stage = previous
        t._metrics.active = t._metrics.train


def eval_epoch(t: Trainer, kind: str, limits: list[float], record: bool = True) -> dict[str, Any]:
    """One pass over every evaluation loader (``kind`` is "validation" or "test")."""
    metrics, hooks = t._metrics, t._hooks
    metrics.eval.reset()
    metrics.active = metrics.eval
    logged: dict[str, Any] = {}
    with eval_mode(t), grad_context(t):
        hooks.call(f"on_{kind}_start")
        hooks.call(f"on_{kind}_epoch_start")
        for idx, (loader, limit) in enumerate(zip(t._eval_loaders, limits)):
            metrics.eval.suffix = f"/dataloader_idx_{idx}" if len(t._eval_loaders) > 1 else ""
            eval_loader(t, kind, loader, limit, (idx,) if len(t._eval_loaders) > 1 else ())
        metrics.eval.suffix = ""
        hooks.call(f"on_{kind}_epoch_end")
        if record:
            logged = metrics.epoch_log(metrics.eval)
        hooks.call(f"on_{kind}_end")
    if not record:
        metrics.eval.reset()
    return logged


def eval_loader(t: Trainer, kind: str, loader: DeviceLoader, limit: float, extra: tuple[int, ...]) -> None:
    step = "validation_step" if kind == "validation" else "test_step"
    loader.set_epoch(0)
    if limit <= 0:
        return
    iterator = iter(loader)
    try:
        for batch_idx, batch in enumerate(iterator):
            t._metrics.eval.begin_batch(batch)
            t._hooks.call(f"on_{kind}_batch_start", batch, batch_idx, *extra)
            outputs = run_step(t, step, batch, batch_idx, *extra)
            t._hooks.call(f"on_{kind}_batch_end", outputs, batch, batch_idx, *extra)
            if batch_idx + 1 >= limit:
                break
    finally:
        _close(iterator)


def predict_loop(t: Trainer, limits: list[float]) -> list[list[Any]]:
    hooks, results = t._hooks, []
    with eval_mode(t), grad_context(t):
        hooks.call("on_predict_start")
        hooks.call("on_predict_epoch_start")
        for idx, (loader, limit) in enumerate(zip(t._eval_loaders, limits)):
            extra = (idx,) if len(t._eval_loaders) > 1 else ()
            outputs: list[Any] = []
            loader.set_epoch(0)
            iterator = iter(loader) if limit > 0 else iter(())
            try:
                for batch_idx, batch in enumerate(iterator):
                    hooks.call("on_predict_batch_start", batch, batch_idx, *extra)
                    out = run_step(t, "predict_step", batch, batch_idx, *extra)
                    hooks.call("on_predict_batch_end", out, batch, batch_idx, *extra)
                    outputs.append(out)
                    if batch_idx + 1 >= limit:
                        break
            finally:
                _close(iterator)
            results.append(outputs)
        hooks.call("on_predict_epoch_end")
        hooks.call("on_predict_end")
    return results


@contextlib.contextmanager
def eval_mode(t: Trainer) -> Iterator[None]:
    """``module.eval()`` for the block; every submodule's own mode is restored afterwards."""
    module = t._module
    assert module is not None
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def grad_context(t: Trainer) -> contextlib.AbstractContextManager[Any]:
    return t.accelerator.strategy.eval_context(inference=t.inference_mode)


def _close(iterator: Iterator[Any]) -> None:
    close = getattr(iterator, "close", None)
    if close is not None:
        close()
