"""Faults: preemption signals agreed at a step boundary, a collective non-finite guard, named collective failures.

Everything here is owned by one :class:`~ember.Accelerator`; nothing is global (a signal handler is a bound
method of the object that installed it). The user-facing surface is on the Accelerator:

* ``Accelerator(handle_signals=True)`` + ``accelerator.preempted()`` / ``accelerator.exit_preempted()``:
  SIGTERM or SIGUSR1 on *any* rank makes *every* rank stop at the same step boundary, save, and exit with
  :data:`PREEMPTED_EXIT_CODE`::

      for batch in train_loader:
          ...
          optimizer.step(); optimizer.zero_grad()
          if accelerator.preempted():
              accelerator.save_state()
              accelerator.exit_preempted()

* ``Accelerator(nonfinite="skip" | "halt" | "off")``: a step whose loss or gradients are inf/NaN on any rank is
  skipped on every rank (counted in ``accelerator.skipped_steps``) or raises :class:`NonFiniteError` on every
  rank.
* ``Accelerator(timeout=...)``: a collective in the step path (``backward``, the guard and preemption checks,
  ``wait_for_everyone``) that fails because a peer stalled past the timeout or died raises
  :class:`CollectiveFailedError` naming the rank, the step and what was running.

See ``docs/faults.md``.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any, Final, NoReturn

import torch

from ember._errors import EmberConfigError, unknown_value

if TYPE_CHECKING:
    from ember.accelerator import Accelerator
    from ember.strategies.base import Strategy

PREEMPTED_EXIT_CODE: Final = 75
"""Exit status of a process that stopped because of a preemption signal after saving (``EX_TEMPFAIL``:
"temporary failure, try again"). ``ember launch`` returns it too, so a job script can requeue on 75."""

NONFINITE_MODES: Final = ("off", "skip", "halt")
DEFAULT_SIGNALS: Final = ("SIGTERM", "SIGUSR1")

_COMM_FAILURE = re.compile(
    r"timed? ?out|timeout|connection (closed|reset|refused)|broken pipe|nccl|gloo|socket", re.IGNORECASE
)


class NonFiniteError(FloatingPointError):
    """Raised on every rank by ``nonfinite="halt"`` when a step's loss or gradients are inf/NaN on any rank.

    ``step`` is ``accelerator.step`` when it happened (the update that would have made it ``step + 1`` was not
    applied); ``loss_ranks`` / ``grad_ranks`` list where the non-finite values were found.
    """

    def __init__(self, message: str, step: int, loss_ranks: list[int], grad_ranks: list[int]) -> None:
        super().__init__(message)
        self.step = step
        self.loss_ranks = loss_ranks
        self.grad_ranks = grad_ranks


class CollectiveFailedError(RuntimeError):
    """A collective in the step path failed because a peer rank stalled past the timeout or died.

    ``step`` is ``accelerator.step`` when it happened and ``where`` names the call (e.g. ``"backward()"``).
    """

    def __init__(self, message: str, step: int, where: str) -> None:
        super().__init__(message)
        self.step = step
        self.where = where


# ------------------------------------------------------------------------------------------------------
# preemption
# ------------------------------------------------------------------------------------------------------
def resolve_signals(handle_signals: bool | Sequence[int | str]) -> tuple[signal.Signals, ...]:
    """The signals ``Accelerator(handle_signals=...)`` asks for: True → SIGTERM and SIGUSR1.

    >>> [s.name for s in resolve_signals(True)]
    ['SIGTERM', 'SIGUSR1']
    >>> [s.name for s in resolve_signals(["SIGUSR2"])]
    ['SIGUSR2']
    """
    if handle_signals is False:
        return ()
    wanted: Sequence[int | str] = DEFAULT_SIGNALS if handle_signals is True else handle_signals
    valid = [s.name for s in signal.Signals]
    out: list[signal.Signals] = []
    for item in wanted:
        if isinstance(item, str):
            name = item.upper() if item.upper().startswith("SIG") else "SIG" + item.upper()
            if name not in valid:
                raise unknown_value("handle_signals", item, DEFAULT_SIGNALS)
            out.append(signal.Signals[name])
        else:
            out.append(signal.Signals(int(item)))
    return tuple(out)


class PreemptionHandler:
    """Signal handlers that only record the signal; ranks agree on it later, at a step boundary.

    The handler runs no collective and touches no tensor: it sets ``received``. :meth:`agreed` (called through
    ``accelerator.preempted()``) all-reduces that flag (a MAX of one int) so every rank sees the same answer at the
    same step. A second delivery of a signal that was already received restores the previous handler and
    re-sends the signal, so "kill twice" still works. :meth:`uninstall` restores the previous handlers.

    >>> import os, signal
    >>> handler = PreemptionHandler([signal.SIGUSR1]).install()
    >>> os.kill(os.getpid(), signal.SIGUSR1)
    >>> handler.received == signal.SIGUSR1
    True
    >>> handler.uninstall()
    """

    def __init__(self, signals: Sequence[signal.Signals]) -> None:
        self.signals = tuple(signals)
        self.received: int | None = None
        self._previous: dict[signal.Signals, Any] = {}
        self._agreed = False
        self._last_checked: int | None = None

    def install(self) -> PreemptionHandler:
        if threading.current_thread() is not threading.main_thread():
            raise EmberConfigError(
                "Accelerator(handle_signals=True) must be created in the main thread (Python only delivers "
                "signals there). Create the Accelerator in the main thread or pass handle_signals=False."
            )
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def uninstall(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, previous in self._previous.items():
            if signal.getsignal(sig) in (self._on_signal, signal.SIG_IGN):
                signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def ignore(self) -> None:
        """Ignore these signals from now on (used while exiting after the state was saved)."""
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                signal.signal(sig, signal.SIG_IGN)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None and self.received == signum:
            previous = self._previous.get(signal.Signals(signum), signal.SIG_DFL)
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.received = signum

    def agreed(self, strategy: Strategy, step: int, device: torch.device, every_n_steps: int = 1) -> bool:
        """True on every rank once any rank received a signal (checked once per ``every_n_steps`` steps)."""
        if self._agreed:
            return True
        if step == self._last_checked or step % every_n_steps:
            return False
        self._last_checked = step
        if not strategy.is_distributed:
            self._agreed = self.received is not None
            return self._agreed
        flag = torch.tensor([0 if self.received is None else 1], dtype=torch.int32, device=device)
        with named_collective(strategy, "preempted()", lambda: step):
            self._agreed = bool(strategy.all_reduce(flag, "max").item())
        return self._agreed


# ------------------------------------------------------------------------------------------------------
# non-finite guard
# ------------------------------------------------------------------------------------------------------
def check_nonfinite_mode(value: str) -> str:
    """Validate ``Accelerator(nonfinite=...)``.

    >>> check_nonfinite_mode("skip")
    'skip'
    """
    if value not in NONFINITE_MODES:
        raise unknown_value("nonfinite", value, NONFINITE_MODES)
    return value


def all_finite(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """A 0-d bool tensor (on the first tensor's device, no host sync): every element of every tensor is finite.

    One fused max-abs norm per (device, dtype) group: it propagates NaN and, unlike the 2-norm, never
    overflows for finite values.

    >>> bool(all_finite([torch.ones(3), torch.tensor([1.0, float("nan")])]))
    False
    """
    if not tensors:
        return torch.tensor(True)
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    device = tensors[0].device
    flags = [torch.isfinite(torch.stack(torch._foreach_norm(g, math.inf))).all().to(device) for g in groups.values()]
    return flags[0] if len(flags) == 1 else torch.stack(flags).all()


class NonFiniteGuard:
    """Decides, identically on every rank, whether a step with inf/NaN loss or gradients is skipped or halts.

    Wired by ``Accelerator(nonfinite="skip" | "halt")``: ``backward`` records whether each loss is finite (a
    device op, no sync) and, right before gradients are unscaled for an optimizer step, :meth:`check` computes
    one fused finiteness flag over that optimizer's gradients, all-reduces a ``(2, world_size)`` table of flags
    (one collective) and reads it back: **one host sync per optimizer step**, the price of this feature (which
    is why the default is ``"off"``).

    With a GradScaler (``"16-mixed"``), inf/NaN *gradients* with a finite loss are the scaler's routine overflow
    signal: the scaler skips the step and lowers its scale, identically on every rank (the guard sets a rank's
    gradients to NaN if only another rank overflowed), and the step counts in ``skipped_steps``; ``"halt"`` does
    not halt on those. A non-finite *loss* is skipped (or halts) without touching the scaler.
    """

    def __init__(self, mode: str, strategy: Strategy) -> None:
        self.mode = check_nonfinite_mode(mode)
        self.strategy = strategy
        self._loss_bad: torch.Tensor | None = None
        self._loss_consumed = False

    def note_loss(self, loss: torch.Tensor) -> None:
        """Record (on device) whether ``loss`` is finite; losses of one accumulation window are combined."""
        bad = ~torch.isfinite(loss.detach()).all()
        if self._loss_bad is None or self._loss_consumed:
            self._loss_bad, self._loss_consumed = bad, False
        else:
            self._loss_bad = self._loss_bad | bad

    def check(self, grads: Sequence[torch.Tensor], step: int, device: torch.device, has_scaler: bool) -> bool:
        """Return True if this optimizer step must be skipped by ember; raise NonFiniteError under "halt"."""
        process = self.strategy.process
        loss_bad = self._loss_bad if self._loss_bad is not None else torch.tensor(False)
        self._loss_consumed = True
        grads_bad = ~all_finite(grads).to(device)
        table = torch.zeros(2, max(1, process.world_size), dtype=torch.int32, device=device)
        table[:, process.rank] = torch.stack([loss_bad.to(device), grads_bad]).to(torch.int32)
        with named_collective(self.strategy, "the non-finite check", lambda: step):
            flags = self.strategy.all_reduce(table, "sum").tolist()  # the one host sync per step
        loss_ranks = [r for r, v in enumerate(flags[0]) if v]
        grad_ranks = [r for r, v in enumerate(flags[1]) if v]
        if not loss_ranks and not grad_ranks:
            return False
        if has_scaler and not loss_ranks:  # fp16 overflow: the GradScaler skips and backs off on every rank
            if not flags[1][process.rank] and grads:
                torch._foreach_mul_(list(grads), math.nan)
            return False
        what = _describe(loss_ranks, grad_ranks)
        if self.mode == "halt":
            raise NonFiniteError(
                f"nonfinite='halt': {what} at step {step} (accelerator.step; the update to step {step + 1} was "
                "not applied). Lower the learning rate, check the inputs of that step, enable gradient clipping, "
                "or pass nonfinite='skip' to skip such steps.",
                step,
                loss_ranks,
                grad_ranks,
            )
        return True


def _describe(loss_ranks: list[int], grad_ranks: list[int]) -> str:
    parts = []
    if loss_ranks:
        parts.append(f"non-finite loss on rank(s) {loss_ranks}")
    if grad_ranks:
        parts.append(f"non-finite gradients on rank(s) {grad_ranks}")
    return " and ".join(parts)


def skip_message(step: int, skipped: int) -> str:
    return f"nonfinite='skip': step {step} had inf/NaN loss or gradients; update skipped ({skipped} so far)"


# ------------------------------------------------------------------------------------------------------
# hangs and dead peers
# ------------------------------------------------------------------------------------------------------
def is_comm_failure(exc: BaseException) -> bool:
    """Whether ``exc`` looks like a collective that timed out or lost its peer (gloo/NCCL/c10d errors)."""
    dist_error = getattr(torch.distributed, "DistError", None)
    if dist_error is not None and isinstance(exc, dist_error):
        return True
    return isinstance(exc, RuntimeError) and bool(_COMM_FAILURE.search(str(exc)))


class StepWatchdog:
    """Reports a rank that makes no optimizer step for as long as the process-group timeout.

    A daemon thread wakes every ``timeout / 4`` seconds (at most 30 s) and reads ``accelerator.step``; when it has
    not changed for ``timeout`` seconds it prints, once per stall, the step this rank is at and where its main
    thread is. It never stops anything (the process-group timeout does): it names the step on NCCL, where a
    timed-out collective aborts the process from NCCL's own watchdog instead of raising in Python, and on a rank
    that stalls outside any collective. Started by the Accelerator in jobs of more than one process.

    >>> import time
    >>> dog = StepWatchdog(rank=0, timeout_s=0.2, read_step=lambda: 7).start()
    >>> time.sleep(0.5)  # doctest: +SKIP
    >>> dog.stop()
    """

    def __init__(self, rank: int, timeout_s: float, read_step: Callable[[], int]) -> None:
        self.rank, self.timeout_s, self._read = rank, timeout_s, read_step
        self.interval = min(30.0, max(0.05, timeout_s / 4))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> StepWatchdog:
        self._thread = threading.Thread(target=self._run, name="ember-step-watchdog", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        main = threading.main_thread().ident
        last, since, warned = self._read(), time.monotonic(), False
        while not self._stop.wait(self.interval):
            step, now = self._read(), time.monotonic()
            if step != last:
                last, since, warned = step, now, False
            elif not warned and now - since >= self.timeout_s:
                warned = True
                frame = sys._current_frames().get(main) if main is not None else None
                where = "".join(traceback.format_stack(frame)[-4:]) if frame is not None else "  (unknown)\n"
                print(
                    f"[ember] rank {self.rank}: no optimizer step for {now - since:.0f}s (the process-group timeout "
                    f"is {self.timeout_s:g}s); still at step {step}. The main thread is at:\n{where}",
                    file=sys.stderr, flush=True,
                )


def raise_if_comm_failure(strategy: Strategy, where: str, step: int, exc: RuntimeError) -> None:
    """Raise :class:`CollectiveFailedError` (naming rank, call and step) from ``exc`` if it is a collective that
    timed out or lost a peer; otherwise return, and the caller re-raises ``exc``. Costs nothing until then."""
    if not strategy.is_distributed or isinstance(exc, CollectiveFailedError) or not is_comm_failure(exc):
        return
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    timeout = strategy.timeout.total_seconds()
    raise CollectiveFailedError(
        f"rank {strategy.process.rank}/{strategy.process.world_size}: a collective in {where} at step {step} "
        f"failed: {first}. A peer rank stalled for longer than the process-group timeout ({timeout:g}s) or "
        "died; look at the other ranks' output for the cause. If steps are legitimately that slow, raise "
        "Accelerator(timeout=...).",
        step,
        where,
    ) from exc


@contextlib.contextmanager
def named_collective(strategy: Strategy, where: str, step: Callable[[], int]) -> Iterator[None]:
    """Re-raise a collective failure inside the block as :class:`CollectiveFailedError` naming rank and step.

    The process-group timeout (``Accelerator(timeout=...)``) bounds how long a collective waits for a stalled
    peer (gloo raises at the timeout; NCCL's watchdog aborts the communicator). This only adds the context.
    """
    try:
        yield
    except RuntimeError as exc:
        raise_if_comm_failure(strategy, where, step(), exc)
        raise


# ------------------------------------------------------------------------------------------------------
# Accelerator verbs (assigned as methods in ember.accelerator)
# ------------------------------------------------------------------------------------------------------
def preempted(self: Accelerator, every_n_steps: int = 1) -> bool:
    """True on every rank once any rank got a preemption signal (``handle_signals=True``); call it after
    ``optimizer.step()``. One all-reduce of one int, at most once per optimizer step (every ``every_n_steps``),
    none inside an accumulation window or without ``handle_signals``.

    >>> from ember import Accelerator
    >>> accelerator = Accelerator(cpu=True, handle_signals=True)
    >>> if accelerator.preempted():       # in the loop
    ...     accelerator.save_state()
    ...     accelerator.exit_preempted()  # exit status ember.faults.PREEMPTED_EXIT_CODE (75)
    >>> accelerator.end_training()
    """
    if self._preemption is None or not self.gradient_state.sync_gradients:
        return False
    return self._preemption.agreed(self.strategy, self.gradient_state.attempted_steps, self.device,
                                   max(1, every_n_steps))


def exit_preempted(self: Accelerator) -> NoReturn:
    """After :meth:`save_state` once :meth:`preempted` is True: finish trackers, close the process group, exit
    with ``ember.faults.PREEMPTED_EXIT_CODE``.

    >>> from ember import Accelerator
    >>> accelerator = Accelerator(cpu=True, handle_signals=True)
    >>> if accelerator.preempted():  # False: no signal arrived, so this does not exit
    ...     accelerator.exit_preempted()
    >>> accelerator.end_training()
    """
    self.trackers.finish()
    if self._preemption is not None:  # the launcher may signal again while we exit: the state is saved
        self._preemption.ignore()
    if self._watchdog is not None:
        self._watchdog.stop()
    self.strategy.teardown()
    raise SystemExit(PREEMPTED_EXIT_CODE)
