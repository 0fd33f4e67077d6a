"""The step: gradient accumulation windows, loss scaling, gradient preparation, clipping, and the optimizer and
scheduler wrappers that obey them. Everything backend-specific is a call on the Strategy or the Precision.

Loss scaling rule (documented in the README and the Accelerator docstring):

* ``accumulation_reduction="mean"`` (default): each micro-batch loss is multiplied by ``1/K`` in
  ``backward``; if a window ends early (the last, partial window of an epoch holds ``n < K`` micro-batches)
  the gradients are multiplied by ``K/n`` before clipping and stepping. The step's gradient is the mean of the
  micro-batch gradients — the same as one K×-larger batch when micro-batches have equal size.
* ``backward(loss, num_items=n)``: token-count weighting for language models. ``loss`` is the mean over ``n``
  items; ember back-propagates ``loss * n`` and, at the step, divides the gradients by the total item count of
  the window summed over all data-parallel ranks. The step's gradient is then the mean over every item (token)
  in the window.
* ``accumulation_reduction="sum"``: ember never rescales; the gradient is the sum of what you back-propagate.

Skipped steps (fp16 overflow, ``nonfinite="skip"``) are decided on the device: the decision is a lazy flag read
only when something asks (``optimizer.step_was_skipped``, ``accelerator.step``, a prepared scheduler's ``step``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ember import faults
from ember.strategies.base import BackwardSyncControl, GradientHolder

if TYPE_CHECKING:
    from ember.accelerator import Accelerator
    from ember.faults import NonFiniteGuard
    from ember.precision import Precision
    from ember.strategies.base import Strategy


@dataclass
class GradientState:
    """Where we are inside a gradient-accumulation window. Owned by one Accelerator, shared explicitly."""

    accumulation_steps: int = 1
    reduction: str = "mean"
    sync_gradients: bool = True
    window_micro_steps: int = 0
    end_of_dataloader: bool = False
    padding_in_batch: int = 0
    #: real optimizer steps attempted (host count; never waits for the device)
    attempted_steps: int = 0
    window_items: torch.Tensor | None = None
    items_used: bool = False  # window_items were applied by a step: the next backward starts a new count
    prepared: set[int] = field(default_factory=set)
    _skipped: int = 0
    _pending: list[Any] = field(default_factory=list)  # skip decisions not read yet (lazy flags)

    def end_window(self) -> None:
        self.window_micro_steps = 0
        self.window_items = None
        self.items_used = False
        self.prepared.clear()

    def record_step(self, skipped: Any) -> None:
        """Count one real optimizer step; ``skipped`` may be a lazy flag (read when a counter is asked for)."""
        self.attempted_steps += 1
        if isinstance(skipped, bool):
            self._skipped += int(skipped)
        else:
            self._pending.append(skipped)
            if len(self._pending) > 256:
                self._resolve()

    def _resolve(self) -> None:
        pending, self._pending = self._pending, []
        self._skipped += sum(bool(flag) for flag in pending)

    @property
    def skipped_steps(self) -> int:
        self._resolve()
        return self._skipped

    @skipped_steps.setter
    def skipped_steps(self, value: int) -> None:
        done = self.optimizer_steps
        self._skipped, self.attempted_steps = int(value), done + int(value)

    @property
    def optimizer_steps(self) -> int:
        """Real optimizer steps taken (skipped ones not counted)."""
        return self.attempted_steps - self.skipped_steps

    @optimizer_steps.setter
    def optimizer_steps(self, value: int) -> None:
        self.attempted_steps = int(value) + self.skipped_steps


_NOTHING = contextlib.nullcontext()


class Stepper:
    """Applies precision, accumulation and the strategy to backward, gradients and the optimizer step."""

    def __init__(self, state: GradientState, precision: Precision, strategy: Strategy) -> None:
        self.state = state
        self.precision = precision
        self.strategy = strategy
        self.guard: NonFiniteGuard | None = None  # Accelerator(nonfinite="skip"/"halt"), see ember.faults
        self.skipping: set[int] = set()  # optimizers whose current step the guard decided to skip
        self.dp_group: Any = None  # the data-parallel group for num_items totals (None: the default group)
        self.dp_size = 1

    # backward -----------------------------------------------------------------------------------------------
    def scale_loss(self, loss: torch.Tensor, num_items: Any = None) -> torch.Tensor:
        state = self.state
        if self.guard is not None:
            self.guard.note_loss(loss)
        if num_items is not None:
            if state.items_used:  # without accumulate() nothing else ends the window's item count
                state.window_items, state.items_used = None, False
            items = torch.as_tensor(num_items, device=loss.device, dtype=torch.float32)
            state.window_items = items if state.window_items is None else state.window_items + items
            loss = loss * items
        elif state.accumulation_steps > 1 and state.reduction == "mean":
            loss = loss / state.accumulation_steps
        return self.precision.scale_loss(loss)

    def backward(self, loss: torch.Tensor, num_items: Any, module: torch.nn.Module | None, **kwargs: Any) -> None:
        self.strategy.backward(self.scale_loss(loss, num_items), module, **kwargs)

    # accumulation windows -----------------------------------------------------------------------------------
    def accumulate(self, models: Sequence[torch.nn.Module]) -> contextlib.AbstractContextManager[Any]:
        """One micro-step: a window boundary every ``accumulation_steps`` micro-steps or at the end of the data.
        The window's bookkeeping happens here, when ``accumulate(...)`` is called (``with`` calls it at once)."""
        state = self.state
        if state.sync_gradients:  # the previous micro-step ended a window (or this is the first one)
            state.end_window()
        state.window_micro_steps += 1
        boundary = state.window_micro_steps >= state.accumulation_steps or state.end_of_dataloader
        state.sync_gradients = boundary
        if boundary:  # the common case (and every step without accumulation): nothing to enter
            return _NOTHING
        stack = contextlib.ExitStack()
        for model in models:
            stack.enter_context(self.no_sync(model))
        return stack

    def no_sync(self, model: torch.nn.Module) -> contextlib.AbstractContextManager[Any]:
        if isinstance(self.strategy, BackwardSyncControl):
            return self.strategy.no_backward_sync(model)
        return contextlib.nullcontext()

    # gradients ----------------------------------------------------------------------------------------------
    def prepare_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        """Unscale (fp16) and apply the accumulation rescale, once per optimizer per window."""
        state = self.state
        if id(optimizer) in state.prepared:
            return
        state.prepared.add(id(optimizer))
        partial = state.reduction == "mean" and 0 < state.window_micro_steps < state.accumulation_steps
        if self.guard is None and state.window_items is None and not partial:
            self.precision.unscale_(optimizer)  # the common case: no per-parameter Python work
            return
        items = state.window_items
        if items is not None:  # this step consumes the window's item count, whether it is taken or skipped
            state.items_used = True
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if self.guard is not None:  # before unscaling: a skipped step leaves the GradScaler untouched
            has_scaler = getattr(self.precision, "scaler", None) is not None
            if self.guard.check(grads, state.attempted_steps, self.strategy.device, has_scaler):
                self.skipping.add(id(optimizer))
                return
        self.precision.unscale_(optimizer)
        holder = self.strategy if isinstance(self.strategy, GradientHolder) else None
        if not grads and holder is None:
            return
        factor: Any = None
        if items is not None:
            total = self.strategy.all_reduce(items.reshape(1), "sum", group=self.dp_group)
            factor = (self.dp_size / total.clamp_min(1.0)).reshape(())
        elif partial and state.accumulation_steps > 1:
            factor = state.accumulation_steps / state.window_micro_steps
        if factor is None:
            return
        if holder is not None:  # gradients kept by the strategy (DeepSpeed's partitions)
            holder.scale_gradients_(optimizer, factor)
        elif isinstance(factor, torch.Tensor):
            torch._foreach_mul_(grads, factor.to(grads[0].device, grads[0].dtype))
        else:
            torch._foreach_mul_(grads, factor)

    def clip_grad_norm_(
        self, module: torch.nn.Module | None, parameters: Iterable[torch.nn.Parameter], max_norm: float,
        norm_type: float, optimizers: Sequence[AcceleratedOptimizer],
    ) -> torch.Tensor | None:
        if not self.state.sync_gradients:
            return None
        for opt in optimizers:
            self.prepare_gradients(opt.optimizer)
        return self.strategy.clip_grad_norm_(module, parameters, max_norm, norm_type)

    def clip_grad_value_(
        self, module: torch.nn.Module | None, parameters: Iterable[torch.nn.Parameter], clip_value: float,
        optimizers: Sequence[AcceleratedOptimizer],
    ) -> None:
        if not self.state.sync_gradients:
            return
        for opt in optimizers:
            self.prepare_gradients(opt.optimizer)
        self.strategy.clip_grad_value_(module, parameters, clip_value)

    # the optimizer step -----------------------------------------------------------------------------------
    def step(self, optimizer: torch.optim.Optimizer, closure: Any) -> Any:
        """A real step of ``optimizer`` (at a window boundary); returns the skip decision (maybe lazy)."""
        self.prepare_gradients(optimizer)
        if id(optimizer) in self.skipping:  # the non-finite guard decided: skip on every rank
            self.skipping.discard(id(optimizer))
            skipped: Any = True
            if isinstance(self.strategy, GradientHolder):  # the strategy's own accumulated gradients go too
                self.strategy.discard_gradients_(optimizer)
        else:
            skipped = (self.strategy.optimizer_step(optimizer, self.precision) if closure is None
                       else self.strategy.optimizer_step(optimizer, self.precision, closure=closure))
        self.state.record_step(skipped)
        if skipped is True and self.guard is not None and self.strategy.process.rank == 0:
            from ember._log import info
            from ember.faults import skip_message

            info(skip_message(self.state.optimizer_steps, self.state.skipped_steps))
        self.state.prepared.discard(id(optimizer))  # without accumulate(), every step is its own window
        return skipped


class AcceleratedOptimizer(torch.optim.Optimizer):
    """The user's optimizer, stepping only on accumulation boundaries and skipping overflowing fp16 steps.

    ``step_was_skipped`` tells whether the last real step was skipped (fp16 overflow or a non-finite guard);
    reading it may wait for the device (the decision is made there).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, stepper: Stepper) -> None:
        self.optimizer = optimizer
        self._stepper = stepper
        self._skipped: Any = False
        # No super().__init__: this object only delegates; the wrapped optimizer owns all state.

    @property
    def step_was_skipped(self) -> bool:
        return bool(self._skipped)

    # delegate the Optimizer surface ---------------------------------------------------------------------
    @property  # type: ignore[override]
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.optimizer.param_groups = value

    @property  # type: ignore[override,unused-ignore]
    def state(self) -> Any:
        return self.optimizer.state

    @state.setter
    def state(self, value: Any) -> None:
        self.optimizer.state = value

    @property  # type: ignore[override,unused-ignore]
    def defaults(self) -> dict[str, Any]:
        return self.optimizer.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self.optimizer.defaults = value

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        self.optimizer.load_state_dict(state_dict)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.optimizer.add_param_group(param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear gradients — only at the end of an accumulation window (a no-op inside one)."""
        if self._stepper.state.sync_gradients:
            self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        """Step on accumulation boundaries only; inside a window this does nothing."""
        if self._stepper.state.sync_gradients:
            self._skipped = self._stepper.step(self.optimizer, closure)

    def __getattr__(self, name: str) -> Any:
        if name in ("optimizer", "_stepper", "_skipped"):
            raise AttributeError(name)
        return getattr(self.optimizer, name)

    def __repr__(self) -> str:
        return f"AcceleratedOptimizer({self.optimizer!r})"

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


class AcceleratedScheduler:
    """Steps the user's scheduler once per real optimizer step — never per micro-batch, never × world size.

    With ``step_with_optimizer=False`` (Accelerate's ``step_scheduler_with_optimizer=False``) every call steps the
    scheduler: the user decides when.
    """

    def __init__(
        self, scheduler: Any, optimizers: list[AcceleratedOptimizer], state: GradientState,
        step_with_optimizer: bool = True,
    ) -> None:
        self.scheduler = scheduler
        self.optimizers = optimizers
        self._state = state
        self.step_with_optimizer = step_with_optimizer

    def step(self, *args: Any, **kwargs: Any) -> None:
        if self.step_with_optimizer:
            if not self._state.sync_gradients:
                return
            for opt in self.optimizers:  # a lazily decided skip is read here (False needs no read)
                if opt._skipped is not False and bool(opt._skipped):
                    return
        self.scheduler.step(*args, **kwargs)

    def get_last_lr(self) -> list[float]:
        return list(self.scheduler.get_last_lr())

    def state_dict(self) -> dict[str, Any]:
        return dict(self.scheduler.state_dict())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state_dict)

    def __getattr__(self, name: str) -> Any:
        if name in ("scheduler", "optimizers", "_state", "step_with_optimizer"):
            raise AttributeError(name)
        return getattr(self.scheduler, name)

    def __repr__(self) -> str:
        return f"AcceleratedScheduler({self.scheduler!r})"


# ------------------------------------------------------------------------------------------------------
# Accelerator verbs (assigned as methods in ember.accelerator)
# ------------------------------------------------------------------------------------------------------
def backward(self: Accelerator, loss: torch.Tensor, num_items: Any = None, **kwargs: Any) -> None:
    """Back-propagate ``loss`` through precision and strategy (``kwargs`` as ``Tensor.backward``).

    With gradient accumulation the loss is scaled by ``1/K`` ("mean", the default — documented, not
    hidden: see the class docstring). Pass ``num_items`` (e.g. the number of target tokens in this
    micro-batch, ``loss`` being their mean) to weight the step's gradient by item counts across
    micro-batches and ranks.

    >>> from ember import Accelerator
    >>> accelerator = Accelerator(cpu=True, verbose=False)
    >>> model = accelerator.prepare(torch.nn.Linear(2, 1, bias=False))
    >>> accelerator.backward(model(torch.ones(1, 2)).sum())
    >>> model.weight.grad
    tensor([[1., 1.]])

    With ``num_items`` the step's gradient is the mean over all items, not of the micro-batch means:

    >>> accelerator = Accelerator(cpu=True, verbose=False, gradient_accumulation_steps=2)
    >>> w = torch.nn.Linear(1, 1, bias=False)
    >>> w, optimizer = accelerator.prepare(w, torch.optim.SGD(w.parameters(), lr=0.1))
    >>> for x in (torch.tensor([[4.0]]), torch.zeros(3, 1)):  # 1 item, then 3 items
    ...     with accelerator.accumulate(w):
    ...         accelerator.backward(w(x).mean(), num_items=len(x))
    >>> accelerator.unscale_gradients(); w.weight.grad  # (4 + 0 + 0 + 0) / 4; mean of means gives 2
    tensor([[1.]])
    """
    module = self.prepared.models[0] if len(self.prepared.models) == 1 else None
    try:
        self._stepper.backward(loss, num_items, module, **kwargs)
    except RuntimeError as exc:  # a stalled or dead peer in DDP's all-reduce: name the step
        faults.raise_if_comm_failure(self.strategy, "backward()", self.gradient_state.attempted_steps, exc)
        raise


def accumulate(self: Accelerator, *models: torch.nn.Module) -> contextlib.AbstractContextManager[None]:
    """One micro-step. Gradients are synchronised and the optimizer steps only when the window ends
    (every ``gradient_accumulation_steps`` micro-steps, or at the end of the dataloader).

    The window's bookkeeping is cleared when the *next* window begins, so ``optimizer.step()`` and
    ``clip_grad_norm_`` give the same result inside the block or right after it.

    >>> from ember import Accelerator
    >>> accelerator = Accelerator(cpu=True, verbose=False, gradient_accumulation_steps=2)
    >>> model = torch.nn.Linear(2, 1)
    >>> model, optimizer = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    >>> for _ in range(4):
    ...     with accelerator.accumulate(model):
    ...         accelerator.backward(model(torch.ones(1, 2)).sum())
    ...         optimizer.step(); optimizer.zero_grad()
    >>> accelerator.step  # 4 micro-batches, 2 optimizer steps
    2
    """
    return self._stepper.accumulate(models or self.prepared.models)


def no_sync(self: Accelerator, model: torch.nn.Module) -> contextlib.AbstractContextManager[Any]:
    """Skip the gradient all-reduce for backward passes inside this block (gradients still accumulate).

    >>> from ember import Accelerator
    >>> accelerator = Accelerator(cpu=True, verbose=False)
    >>> model = accelerator.prepare(torch.nn.Linear(2, 1, bias=False))
    >>> with accelerator.no_sync(model):
    ...     accelerator.backward(model(torch.ones(1, 2)).sum())
    >>> accelerator.backward(model(torch.ones(1, 2)).sum())  # synchronised, with the sum of both
    >>> model.weight.grad
    tensor([[2., 2.]])
    """
    return self._stepper.no_sync(model)


def autocast(self: Accelerator) -> contextlib.AbstractContextManager[Any]:
    """The precision's autocast context (prepared models already run their forward under it).

    >>> from ember import Accelerator
    >>> accelerator = Accelerator(cpu=True, mixed_precision="bf16")
    >>> with accelerator.autocast():
    ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
    torch.bfloat16
    """
    return self.precision.autocast(self.device.type)


def unscale_gradients(self: Accelerator, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Unscale (fp16) and rescale (accumulation, ``num_items``) the gradients of prepared optimizers now,
    e.g. before inspecting them; done once per window (``clip_grad_*`` and ``step`` call it too).

    >>> from ember import Accelerator
    >>> accelerator = Accelerator(cpu=True, verbose=False, mixed_precision="fp16")
    >>> model = torch.nn.Linear(2, 1, bias=False)
    >>> model, optimizer = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    >>> accelerator.backward(model(torch.full((4, 2), 0.5)).float().mean())  # a float32 loss
    >>> model.weight.grad  # multiplied by the GradScaler's scale, 2**16
    tensor([[32768., 32768.]])
    >>> accelerator.unscale_gradients(optimizer); model.weight.grad
    tensor([[0.5000, 0.5000]])
    """
    for opt in self.prepared.optimizers:
        if optimizer is None or opt is optimizer or opt.optimizer is optimizer:
            self._stepper.prepare_gradients(opt.optimizer)


def clip_grad_norm_(
    self: Accelerator, parameters: Iterable[torch.nn.Parameter], max_norm: float, norm_type: float = 2.0
) -> torch.Tensor | None:
    """Clip the total gradient norm (over every rank's shard) at a window boundary; returns the norm before.

    Inside an accumulation window (``sync_gradients`` False) it does nothing and returns None: clipping
    a partial sum of gradients would change the result.

    >>> from ember import Accelerator
    >>> accelerator = Accelerator(cpu=True, verbose=False)
    >>> model = accelerator.prepare(torch.nn.Linear(2, 1, bias=False))
    >>> accelerator.backward(model(torch.full((1, 2), 2.0)).sum())  # gradient [2, 2]
    >>> accelerator.clip_grad_norm_(model.parameters(), max_norm=1.0)
    tensor(2.8284)
    >>> model.weight.grad.norm()  # doctest: +ELLIPSIS
    tensor(1.0000...)
    """
    module = self.prepared.models[0] if len(self.prepared.models) == 1 else None
    return self._stepper.clip_grad_norm_(module, parameters, max_norm, norm_type, self.prepared.optimizers)


def clip_grad_value_(self: Accelerator, parameters: Iterable[torch.nn.Parameter], clip_value: float) -> None:
    """Clamp every gradient to ``[-clip_value, clip_value]`` at a window boundary.

    >>> from ember import Accelerator
    >>> accelerator = Accelerator(cpu=True, verbose=False)
    >>> model = accelerator.prepare(torch.nn.Linear(2, 1, bias=False))
    >>> accelerator.backward(model(torch.tensor([[2.0, -0.1]])).sum())
    >>> accelerator.clip_grad_value_(model.parameters(), clip_value=0.5); model.weight.grad
    tensor([[ 0.5000, -0.1000]])
    """
    module = self.prepared.models[0] if len(self.prepared.models) == 1 else None
    self._stepper.clip_grad_value_(module, parameters, clip_value, self.prepared.optimizers)
