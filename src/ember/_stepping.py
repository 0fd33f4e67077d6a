"""Gradient accumulation bookkeeping and the optimizer / scheduler wrappers that obey it.

Loss scaling rule (documented in the README and the Accelerator docstring):

* ``accumulation_reduction="mean"`` (default): each micro-batch loss is multiplied by ``1/K`` in
  ``backward``; if a window ends early (the last, partial window of an epoch holds ``n < K`` micro-batches)
  the gradients are multiplied by ``K/n`` before clipping and stepping. The step's gradient is the mean of the
  micro-batch gradients — the same as one K×-larger batch when micro-batches have equal size.
* ``backward(loss, num_items=n)``: token-count weighting for language models. ``loss`` is the mean over ``n``
  items; ember back-propagates ``loss * n`` and, at the step, divides the gradients by the total item count of
  the window summed over all ranks. The step's gradient is then the mean over every item (token) in the window.
* ``accumulation_reduction="sum"``: ember never rescales; the gradient is the sum of what you back-propagate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
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
    optimizer_steps: int = 0
    skipped_steps: int = 0
    window_items: torch.Tensor | None = None
    items_used: bool = False  # window_items were applied by a step: the next backward starts a new count
    prepared: set[int] = field(default_factory=set)

    def end_window(self) -> None:
        self.window_micro_steps = 0
        self.window_items = None
        self.items_used = False
        self.prepared.clear()


class Stepper:
    """Applies precision and accumulation rules to gradients right before a real optimizer step."""

    def __init__(self, state: GradientState, precision: Precision, strategy: Strategy) -> None:
        self.state = state
        self.precision = precision
        self.strategy = strategy
        self.guard: NonFiniteGuard | None = None  # Accelerator(nonfinite="skip"/"halt"), see ember.faults
        self.skipping: set[int] = set()  # optimizers whose current step the guard decided to skip

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
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if self.guard is not None:  # before unscaling: a skipped step leaves the GradScaler untouched
            has_scaler = getattr(self.precision, "scaler", None) is not None
            if self.guard.check(grads, state.optimizer_steps, self.strategy.device, has_scaler):
                self.skipping.add(id(optimizer))
                return
        self.precision.unscale_(optimizer)
        if not grads:
            return
        if state.window_items is not None:
            total = self.strategy.all_reduce(state.window_items.reshape(1), "sum")
            world = self.strategy.process.world_size
            factor = (world / total.clamp_min(1.0)).reshape(()).to(grads[0].dtype)
            torch._foreach_mul_(grads, factor)
            state.items_used = True
        elif (
            state.reduction == "mean"
            and state.accumulation_steps > 1
            and 0 < state.window_micro_steps < state.accumulation_steps
        ):
            torch._foreach_mul_(grads, state.accumulation_steps / state.window_micro_steps)


class AcceleratedOptimizer(torch.optim.Optimizer):
    """The user's optimizer, stepping only on accumulation boundaries and skipping overflowing fp16 steps.

    ``step_was_skipped`` tells whether the last real step was skipped (fp16 overflow or a non-finite guard).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, stepper: Stepper) -> None:
        self.optimizer = optimizer
        self._stepper = stepper
        self.step_was_skipped = False
        # No super().__init__: this object only delegates; the wrapped optimizer owns all state.

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
        state = self._stepper.state
        if not state.sync_gradients:
            return
        stepper = self._stepper
        stepper.prepare_gradients(self.optimizer)
        if id(self.optimizer) in stepper.skipping:  # the non-finite guard decided: skip on every rank
            stepper.skipping.discard(id(self.optimizer))
            self.step_was_skipped = True
        else:
            kwargs = {"closure": closure} if closure is not None else {}
            self.step_was_skipped = stepper.precision.optimizer_step(self.optimizer, **kwargs)
        if self.step_was_skipped:
            state.skipped_steps += 1
            if stepper.guard is not None and stepper.strategy.process.rank == 0:
                from ember.faults import skip_message

                print(skip_message(state.optimizer_steps, state.skipped_steps), flush=True)
        else:
            state.optimizer_steps += 1
        state.prepared.discard(id(self.optimizer))  # without accumulate(), every step is its own window

    def __getattr__(self, name: str) -> Any:
        if name in ("optimizer", "_stepper"):
            raise AttributeError(name)
        return getattr(self.optimizer, name)

    def __repr__(self) -> str:
        return f"AcceleratedOptimizer({self.optimizer!r})"

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


class AcceleratedScheduler:
    """Steps the user's scheduler once per real optimizer step — never per micro-batch, never × world size."""

    def __init__(self, scheduler: Any, optimizers: list[AcceleratedOptimizer], state: GradientState) -> None:
        self.scheduler = scheduler
        self.optimizers = optimizers
        self._state = state

    def step(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.sync_gradients:
            return
        if any(opt.step_was_skipped for opt in self.optimizers):
            return
        self.scheduler.step(*args, **kwargs)

    def get_last_lr(self) -> list[float]:
        return list(self.scheduler.get_last_lr())

    def state_dict(self) -> dict[str, Any]:
        return dict(self.scheduler.state_dict())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state_dict)

    def __getattr__(self, name: str) -> Any:
        if name in ("scheduler", "optimizers", "_state"):
            raise AttributeError(name)
        return getattr(self.scheduler, name)

    def __repr__(self) -> str:
        return f"AcceleratedScheduler({self.scheduler!r})"
