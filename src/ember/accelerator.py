"""``ember.Accelerator``: your own training loop, made distributed and mixed-precision in a few lines.

>>> from ember import Accelerator
>>> import torch
>>> accelerator = Accelerator(cpu=True)
>>> model = torch.nn.Linear(4, 1)
>>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
>>> model, optimizer = accelerator.prepare(model, optimizer)
[ember] model on cpu
>>> loss = model(torch.randn(8, 4, device=accelerator.device)).pow(2).mean()
>>> accelerator.backward(loss)
>>> optimizer.step(); optimizer.zero_grad()

Every backend branch lives in a :class:`~ember.strategies.Strategy` or a :class:`~ember.precision.Precision`;
this file only wires them together.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch.utils.data import DataLoader

from ember import _collectives as C
from ember import faults
from ember._env import ProcessInfo
from ember._errors import EmberConfigError, unknown_value
from ember._handlers import resolve_handlers
from ember._prepare import DataPreparer, check_prepare_args, is_scheduler
from ember._seed import set_seed
from ember._stepping import AcceleratedOptimizer, AcceleratedScheduler, GradientState, Stepper
from ember.data import DeviceLoader
from ember.precision import Precision, resolve_precision
from ember.strategies import Strategy, resolve_strategy

DEVICE_TYPES = ("auto", "cpu", "cuda", "gpu")


class Accelerator:
    """Prepare your model, optimizer, data and scheduler; keep your loop.

    Args:
        mixed_precision: "no"/"fp16"/"bf16" or a Lightning string ("32-true", "16-mixed", "bf16-mixed",
            "bf16-true", "16-true", "64-true"), or a :class:`~ember.precision.Precision`. Default: the
            ``EMBER_MIXED_PRECISION`` environment variable set by ``ember launch``, else float32.
        gradient_accumulation_steps: micro-batches per optimizer step (use ``accumulate``). Loss scaling
            rule: see ``accumulation_reduction`` and :mod:`ember._stepping`.
        accumulation_reduction: "mean" (default: the step's gradient is the mean of its micro-batches'
            gradients, also for a shorter final window) or "sum" (no rescaling at all). Passing
            ``num_items=`` to :meth:`backward` weights by token counts instead.
        cpu / accelerator: force the CPU (``cpu=True`` or ``accelerator="cpu"``); "cuda"/"gpu" requires CUDA.
        device_placement: move models and batches to the device (default True).
        strategy: "auto" (DDP when launched with several processes), "single", "ddp", or a Strategy.
        kwargs_handlers: e.g. ``[DistributedDataParallelKwargs(find_unused_parameters=True)]``,
            ``InitProcessGroupKwargs(timeout=...)``, ``GradScalerKwargs(...)``.
        timeout: collective timeout (seconds or timedelta) for the process group.
        log_with / project_dir: trackers ("csv", "tensorboard", "wandb", "mlflow", "all", objects) and where
            runs, logs and checkpoints go (default ``./runs``).
        seed: seed every RNG now and the sampler shuffle order; None draws a sampler seed once.
        even_batches: pad the last round so every rank sees the same number of batches (default True).
        verbose: print once, at the first ``prepare``, what ember changed on your objects.
        handle_signals: True installs SIGTERM and SIGUSR1 handlers (or pass a list of signals) that only set a
            flag; :meth:`preempted` then agrees on it across ranks at a step boundary. See :mod:`ember.faults`.
        nonfinite: "off" (default), "skip" or "halt": what a step with inf/NaN loss or gradients on any rank
            does, decided identically on every rank (costs one host sync per optimizer step, hence off by
            default; under fp16 the GradScaler already skips overflowing steps). See :mod:`ember.faults`.

    >>> accelerator = Accelerator(cpu=True, verbose=False)
    >>> accelerator
    Accelerator(strategy='single', device=cpu, precision='32-true', rank=0/1)
    >>> accelerator.device, accelerator.mixed_precision
    (device(type='cpu'), '32-true')
    """

    def __init__(
        self,
        device_placement: bool = True,
        mixed_precision: str | Precision | None = None,
        gradient_accumulation_steps: int | None = None,
        cpu: bool = False,
        log_with: str | Any | Sequence[str | Any] | None = None,
        project_dir: str | os.PathLike[str] | None = None,
        seed: int | None = None,
        strategy: str | Strategy | None = "auto",
        kwargs_handlers: Sequence[Any] | None = None,
        timeout: float | datetime.timedelta | None = None,
        accelerator: str = "auto",
        even_batches: bool = True,
        accumulation_reduction: str = "mean",
        step_scheduler_with_optimizer: bool = True,
        verbose: bool = True,
        process: ProcessInfo | None = None,
        handle_signals: bool | Sequence[int | str] = False,
        nonfinite: str = "off",
    ) -> None:
        self.process = process if process is not None else ProcessInfo.from_env()
        # --- validate everything before any process group, model or data work (rule 5) --------------
        # `ember launch` passes its configuration through EMBER_* variables; explicit arguments win.
        if gradient_accumulation_steps is None:
            gradient_accumulation_steps = int(os.environ.get("EMBER_GRADIENT_ACCUMULATION_STEPS", 1))
        if strategy in (None, "auto") and os.environ.get("EMBER_STRATEGY"):
            strategy = os.environ["EMBER_STRATEGY"]
        if accelerator == "auto" and os.environ.get("EMBER_ACCELERATOR"):
            accelerator = os.environ["EMBER_ACCELERATOR"]
        if not isinstance(gradient_accumulation_steps, int) or gradient_accumulation_steps < 1:
            raise EmberConfigError(
                f"gradient_accumulation_steps={gradient_accumulation_steps!r} must be an integer >= 1."
            )
        if accumulation_reduction not in ("mean", "sum"):
            raise unknown_value("accumulation_reduction", accumulation_reduction, ["mean", "sum"])
        handlers = resolve_handlers(kwargs_handlers)
        faults.check_nonfinite_mode(nonfinite)
        signals = faults.resolve_signals(handle_signals)
        self.device = self._select_device(cpu, accelerator)
        if mixed_precision is None:
            mixed_precision = os.environ.get("EMBER_MIXED_PRECISION") or None
        self.precision = resolve_precision(mixed_precision, self.device.type, handlers.scaler)
        self.strategy = resolve_strategy(strategy, self.process.world_size)
        if handlers.ddp and hasattr(self.strategy, "options"):
            for key, value in handlers.ddp.items():
                setattr(self.strategy.options, key, value)
        if self.process.world_size > 1 and not getattr(self.strategy, "supports_multiprocess", True):
            raise EmberConfigError(
                f"strategy={self.strategy.name!r} runs one process, but this job has WORLD_SIZE="
                f"{self.process.world_size}: every process would train its own copy. Use strategy='ddp' "
                "(or 'auto'), or launch a single process."
            )
        if isinstance(timeout, (int, float)):
            timeout = datetime.timedelta(seconds=timeout)
        timeout = timeout or handlers.timeout or datetime.timedelta(minutes=30)
        self.project_dir = Path(project_dir if project_dir is not None else "runs")
        self.verbose = verbose
        # --- set up -----------------------------------------------------------------------------------
        self.strategy.bind(self.process, self.device, timeout)
        self.strategy.setup_environment()
        if seed is not None:
            set_seed(seed)
        self.seed = seed
        self.gradient_state = GradientState(gradient_accumulation_steps, accumulation_reduction)
        self._stepper = Stepper(self.gradient_state, self.precision, self.strategy)
        if nonfinite != "off":
            self._stepper.guard = faults.NonFiniteGuard(nonfinite, self.strategy)
        self._data_even_batches = even_batches
        self._data = DataPreparer(self)
        self._models: list[torch.nn.Module] = []
        self._optimizers: list[AcceleratedOptimizer] = []
        self._schedulers: list[AcceleratedScheduler] = []
        self._dataloaders: list[DeviceLoader] = []
        self._custom_objects: list[Any] = []
        self._notes: list[str] = []
        self._announced = False
        self.step_scheduler_with_optimizer = step_scheduler_with_optimizer
        from ember._tracking import Trackers

        self.trackers = Trackers(self, log_with)
        self._preemption = faults.PreemptionHandler(signals).install() if signals else None
        self._watchdog = (  # names the step of a rank that stops making progress (NCCL aborts silently)
            faults.StepWatchdog(self.process.rank, timeout.total_seconds(), lambda: self.step).start()
            if self.process.world_size > 1 else None
        )

    # ------------------------------------------------------------------------------------------------
    # process facts
    # ------------------------------------------------------------------------------------------------
    def _select_device(self, cpu: bool, accelerator: str) -> torch.device:
        kind = str(accelerator).lower()
        if kind not in DEVICE_TYPES:
            raise unknown_value("accelerator", accelerator, DEVICE_TYPES)
        if cpu or kind == "cpu":
            return torch.device("cpu")
        has_cuda = torch.cuda.is_available()
        if kind in ("cuda", "gpu") and not has_cuda:
            raise EmberConfigError(
                f"accelerator={accelerator!r} asks for CUDA, but torch.cuda.is_available() is False "
                f"(torch {torch.__version__}). Use accelerator='cpu' (or cpu=True), or install a CUDA build."
            )
        if not has_cuda:
            return torch.device("cpu")
        count = torch.cuda.device_count()
        if self.process.local_rank >= count:
            raise EmberConfigError(
                f"this node runs {self.process.local_world_size} processes but has {count} GPU(s): local rank "
                f"{self.process.local_rank} has no GPU. Use --num_processes <= {count} per machine."
            )
        return torch.device("cuda", self.process.local_rank)

    @property
    def process_index(self) -> int:
        """Global rank of this process (``0`` … ``num_processes - 1``).

        >>> Accelerator(cpu=True).process_index
        0
        """
        return self.process.rank

    @property
    def local_process_index(self) -> int:
        """Rank of this process on its machine.

        >>> Accelerator(cpu=True).local_process_index
        0
        """
        return self.process.local_rank

    @property
    def num_processes(self) -> int:
        """Number of processes in the job (the world size).

        >>> Accelerator(cpu=True).num_processes
        1
        """
        return self.process.world_size

    @property
    def is_main_process(self) -> bool:
        """True on global rank 0.

        >>> Accelerator(cpu=True).is_main_process
        True
        """
        return self.process.rank == 0

    @property
    def is_local_main_process(self) -> bool:
        """True on local rank 0 (one process per machine).

        >>> Accelerator(cpu=True).is_local_main_process
        True
        """
        return self.process.local_rank == 0

    @property
    def is_last_process(self) -> bool:
        """True on the highest global rank.

        >>> Accelerator(cpu=True).is_last_process
        True
        """
        return self.process.rank == self.process.world_size - 1

    @property
    def use_distributed(self) -> bool:
        """True when the job has more than one process.

        >>> Accelerator(cpu=True).use_distributed
        False
        """
        return self.process.world_size > 1

    @property
    def distributed_type(self) -> str:
        """The strategy's name: ``'single'``, ``'ddp'``, ...

        >>> Accelerator(cpu=True).distributed_type
        'single'
        """
        return self.strategy.name

    @property
    def mixed_precision(self) -> str:
        """The precision's Lightning-style name; "no"/"fp16"/"bf16" are normalised.

        >>> Accelerator(cpu=True).mixed_precision
        '32-true'
        >>> Accelerator(cpu=True, mixed_precision="bf16").mixed_precision
        'bf16-mixed'
        """
        return self.precision.name

    @property
    def sync_gradients(self) -> bool:
        """True when the current micro-step ends an accumulation window (the optimizer will step).

        >>> accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
        >>> flags = []
        >>> for _ in range(4):
        ...     with accelerator.accumulate():
        ...         flags.append(accelerator.sync_gradients)
        >>> flags
        [False, True, False, True]
        """
        return self.gradient_state.sync_gradients

    @property
    def gradient_accumulation_steps(self) -> int:
        """Micro-batches per optimizer step.

        >>> Accelerator(cpu=True, gradient_accumulation_steps=4).gradient_accumulation_steps
        4
        """
        return self.gradient_state.accumulation_steps

    @property
    def step(self) -> int:
        """Real optimizer steps taken so far (skipped steps not counted).

        >>> accelerator = Accelerator(cpu=True, verbose=False)
        >>> model = torch.nn.Linear(2, 1)
        >>> model, optimizer = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
        >>> accelerator.backward(model(torch.ones(1, 2)).sum()); optimizer.step()
        >>> accelerator.step
        1
        """
        return self.gradient_state.optimizer_steps

    @property
    def optimizer_step_was_skipped(self) -> bool:
        """True when the last ``optimizer.step()`` was skipped (fp16 overflow or ``nonfinite="skip"``).

        >>> Accelerator(cpu=True).optimizer_step_was_skipped
        False
        """
        return any(opt.step_was_skipped for opt in self._optimizers)

    @property
    def skipped_steps(self) -> int:
        """Optimizer steps skipped so far (fp16 overflow or ``nonfinite="skip"``); saved with the state.

        >>> accelerator = Accelerator(cpu=True, verbose=False, nonfinite="skip")
        >>> model = torch.nn.Linear(2, 1)
        >>> model, optimizer = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
        >>> accelerator.backward(model(torch.ones(1, 2)).sum() * float("inf")); optimizer.step()
        [ember] nonfinite='skip': step 0 had inf/NaN loss or gradients; update skipped (1 so far)
        >>> accelerator.skipped_steps, accelerator.step, accelerator.optimizer_step_was_skipped
        (1, 0, True)
        """
        return self.gradient_state.skipped_steps

    def print(self, *args: Any, **kwargs: Any) -> None:
        """``print`` on the local main process only.

        >>> Accelerator(cpu=True).print("loss", 0.5)
        loss 0.5
        """
        if self.is_local_main_process:
            print(*args, **kwargs)

    # ------------------------------------------------------------------------------------------------
    # prepare
    # ------------------------------------------------------------------------------------------------
    def prepare(self, *args: Any, device_placement: Sequence[bool] | None = None) -> Any:
        """Prepare models, optimizers, dataloaders and schedulers, in any order; returned in the same order.

        Anything else is returned unchanged. A scheduler must be prepared together with (or after) its
        optimizer. What ember changed is printed once.

        >>> from torch.utils.data import DataLoader
        >>> accelerator = Accelerator(cpu=True)
        >>> model = torch.nn.Linear(2, 1)
        >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> loader = DataLoader(torch.ones(6, 2), batch_size=4)
        >>> model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
        [ember] model on cpu; dataloader sampler → ResumableSampler(shuffle=False); batches moved to cpu
        >>> type(optimizer).__name__, len(loader)
        ('AcceleratedOptimizer', 2)
        """
        check_prepare_args(args, self._optimizers)
        placement = list(device_placement) if device_placement is not None else [True] * len(args)
        results: list[Any] = list(args)
        order = sorted(range(len(args)), key=lambda i: _prepare_rank(args[i]))
        for i in order:
            results[i] = self._prepare_one(args[i], placement[i])
        if self.verbose and not self._announced and self._notes:
            self.print("[ember] " + "; ".join(dict.fromkeys(self._notes)))  # each change said once
            self._announced = True
        return results[0] if len(results) == 1 else tuple(results)

    def _prepare_one(self, obj: Any, placement: bool) -> Any:
        if isinstance(obj, torch.nn.Module):
            return self.prepare_model(obj, device_placement=placement)
        if isinstance(obj, torch.optim.Optimizer) and not isinstance(obj, AcceleratedOptimizer):
            return self.prepare_optimizer(obj)
        if isinstance(obj, DataLoader):
            return self.prepare_data_loader(obj, device_placement=placement)
        if is_scheduler(obj):
            return self.prepare_scheduler(obj)
        return obj

    def prepare_model(self, model: torch.nn.Module, device_placement: bool = True) -> torch.nn.Module:
        """Convert ``model`` to the precision, move it to the device and wrap it for the strategy.

        >>> accelerator = Accelerator(cpu=True, verbose=False)
        >>> model = accelerator.prepare_model(torch.nn.Linear(2, 1))
        >>> model.weight.device, accelerator.unwrap_model(model) is model
        (device(type='cpu'), True)
        """
        model = self.precision.convert_module(model)
        if self.precision.uses_autocast:
            _autocast_forward(model, self.autocast)
            self._notes.append(f"model.forward runs under {self.precision.name} autocast")
        if device_placement and self.strategy.device is not None:
            wrapped = self.strategy.setup_module(model)
        else:
            wrapped = model
        if wrapped is not model:
            self._notes.append(f"model wrapped in {type(wrapped).__name__} on {self.device}")
        elif device_placement:
            self._notes.append(f"model on {self.device}")
        self._models.append(wrapped)
        return wrapped

    def prepare_optimizer(self, optimizer: torch.optim.Optimizer) -> AcceleratedOptimizer:
        """Wrap ``optimizer`` so ``step``/``zero_grad`` follow accumulation, precision and skipping.

        >>> accelerator = Accelerator(cpu=True, verbose=False)
        >>> model = accelerator.prepare_model(torch.nn.Linear(2, 1))
        >>> optimizer = accelerator.prepare_optimizer(torch.optim.SGD(model.parameters(), lr=0.1))
        >>> type(optimizer).__name__, optimizer.param_groups[0]["lr"]
        ('AcceleratedOptimizer', 0.1)
        """
        optimizer = self.strategy.setup_optimizer(optimizer)
        _move_optimizer_state(optimizer, self.device)
        wrapped = AcceleratedOptimizer(optimizer, self._stepper)
        self._optimizers.append(wrapped)
        return wrapped

    def prepare_scheduler(self, scheduler: Any) -> AcceleratedScheduler:
        """Wrap ``scheduler`` so it steps once per real optimizer step (prepare its optimizer first).

        >>> accelerator = Accelerator(cpu=True, verbose=False)
        >>> model = torch.nn.Linear(2, 1)
        >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
        >>> optimizer = accelerator.prepare_optimizer(optimizer)
        >>> scheduler = accelerator.prepare_scheduler(scheduler)
        >>> model(torch.ones(1, 2)).sum().backward(); optimizer.step(); scheduler.step()
        >>> scheduler.get_last_lr()
        [0.05]
        """
        target = getattr(scheduler, "optimizer", None)
        owners = [o for o in self._optimizers if o.optimizer is target or o is target]
        wrapped = AcceleratedScheduler(scheduler, owners or list(self._optimizers), self.gradient_state)
        self._schedulers.append(wrapped)
        return wrapped

    def prepare_data_loader(
        self, dataloader: DataLoader[Any], device_placement: bool = True, *, track_state: bool = True
    ) -> DeviceLoader:
        """Shard ``dataloader`` across processes and move its batches to the device.

        ``track_state=False`` leaves the loader out of :meth:`save_state` / :meth:`load_state` (evaluation
        loaders that always restart from their beginning), so checkpoints hold only the loaders to resume.

        >>> from torch.utils.data import DataLoader
        >>> accelerator = Accelerator(cpu=True, verbose=False)
        >>> loader = accelerator.prepare_data_loader(DataLoader(torch.arange(6.0), batch_size=4))
        >>> [batch.tolist() for batch in loader]
        [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0]]
        """
        loader = self._data.prepare(dataloader, device_placement, self._notes)
        if track_state:
            self._dataloaders.append(loader)
        return loader

    # ------------------------------------------------------------------------------------------------
    # the step
    # ------------------------------------------------------------------------------------------------
    def backward(self, loss: torch.Tensor, num_items: Any = None, **kwargs: Any) -> None:
        """Back-propagate ``loss`` through precision and strategy.

        With gradient accumulation the loss is scaled by ``1/K`` ("mean", the default — documented, not
        hidden: see the class docstring). Pass ``num_items`` (e.g. the number of target tokens in this
        micro-batch, ``loss`` being their mean) to weight the step's gradient by item counts across
        micro-batches and ranks.

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
        scaled = self._stepper.scale_loss(loss, num_items)
        try:
            if kwargs:
                scaled.backward(**kwargs)  # type: ignore[no-untyped-call,unused-ignore]
            else:
                self.strategy.backward(scaled)  # type: ignore[no-untyped-call,unused-ignore]
        except RuntimeError as exc:  # a stalled or dead peer in DDP's all-reduce: name the step
            faults.raise_if_comm_failure(self.strategy, "backward()", self.step, exc)
            raise

    @contextlib.contextmanager
    def accumulate(self, *models: torch.nn.Module) -> Iterator[None]:
        """One micro-step. Gradients are synchronised and the optimizer steps only when the window ends
        (every ``gradient_accumulation_steps`` micro-steps, or at the end of the dataloader).

        The window's bookkeeping is cleared when the *next* window begins, so ``optimizer.step()`` and
        ``clip_grad_norm_`` give the same result inside the block or right after it.

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
        state = self.gradient_state
        if state.sync_gradients:  # the previous micro-step ended a window (or this is the first one)
            state.end_window()
        state.window_micro_steps += 1
        boundary = state.window_micro_steps >= state.accumulation_steps or state.end_of_dataloader
        state.sync_gradients = boundary
        if boundary:  # the common case (and every step without accumulation): nothing to enter
            yield
            return
        with contextlib.ExitStack() as stack:
            for model in models or self._models:
                stack.enter_context(self.strategy.no_backward_sync(model))
            yield

    @contextlib.contextmanager
    def no_sync(self, model: torch.nn.Module) -> Iterator[None]:
        """Skip the gradient all-reduce for backward passes inside this block (gradients still accumulate).

        >>> accelerator = Accelerator(cpu=True, verbose=False)
        >>> model = accelerator.prepare(torch.nn.Linear(2, 1, bias=False))
        >>> with accelerator.no_sync(model):
        ...     accelerator.backward(model(torch.ones(1, 2)).sum())
        >>> accelerator.backward(model(torch.ones(1, 2)).sum())  # synchronised, with the sum of both
        >>> model.weight.grad
        tensor([[2., 2.]])
        """
        with self.strategy.no_backward_sync(model):
            yield

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The precision's autocast context (prepared models already run their forward under it).

        >>> accelerator = Accelerator(cpu=True, mixed_precision="bf16")
        >>> with accelerator.autocast():
        ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
        torch.bfloat16
        """
        return self.precision.autocast(self.device.type)

    def unscale_gradients(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Unscale (fp16) and rescale (accumulation, ``num_items``) the gradients of prepared optimizers now,
        e.g. before inspecting them; done once per window (``clip_grad_*`` and ``step`` call it too).

        >>> accelerator = Accelerator(cpu=True, verbose=False, mixed_precision="fp16")
        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> model, optimizer = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
        >>> accelerator.backward(model(torch.full((4, 2), 0.5)).float().mean())  # a float32 loss
        >>> model.weight.grad  # multiplied by the GradScaler's scale, 2**16
        tensor([[32768., 32768.]])
        >>> accelerator.unscale_gradients(optimizer); model.weight.grad
        tensor([[0.5000, 0.5000]])
        """
        for opt in self._optimizers:
            if optimizer is None or opt is optimizer or opt.optimizer is optimizer:
                self._stepper.prepare_gradients(opt.optimizer)

    def clip_grad_norm_(
        self, parameters: Iterable[torch.nn.Parameter], max_norm: float, norm_type: float = 2.0
    ) -> torch.Tensor | None:
        """Clip the total gradient norm at a window boundary; returns the norm before clipping.

        Inside an accumulation window (``sync_gradients`` False) it does nothing and returns None: clipping
        a partial sum of gradients would change the result.

        >>> accelerator = Accelerator(cpu=True, verbose=False)
        >>> model = accelerator.prepare(torch.nn.Linear(2, 1, bias=False))
        >>> accelerator.backward(model(torch.full((1, 2), 2.0)).sum())  # gradient [2, 2]
        >>> accelerator.clip_grad_norm_(model.parameters(), max_norm=1.0)
        tensor(2.8284)
        >>> model.weight.grad.norm()  # doctest: +ELLIPSIS
        tensor(1.0000...)
        """
        if not self.sync_gradients:
            return None
        self.unscale_gradients()
        return self.strategy.clip_grad_norm_(parameters, max_norm, norm_type)

    def clip_grad_value_(self, parameters: Iterable[torch.nn.Parameter], clip_value: float) -> None:
        """Clamp every gradient to ``[-clip_value, clip_value]`` at a window boundary.

        >>> accelerator = Accelerator(cpu=True, verbose=False)
        >>> model = accelerator.prepare(torch.nn.Linear(2, 1, bias=False))
        >>> accelerator.backward(model(torch.tensor([[2.0, -0.1]])).sum())
        >>> accelerator.clip_grad_value_(model.parameters(), clip_value=0.5); model.weight.grad
        tensor([[ 0.5000, -0.1000]])
        """
        if not self.sync_gradients:
            return
        self.unscale_gradients()
        self.strategy.clip_grad_value_(parameters, clip_value)

    # ------------------------------------------------------------------------------------------------
    # collectives
    # ------------------------------------------------------------------------------------------------
    def gather(self, tensor: Any) -> Any:
        """Concatenate tensors (nested structures too) from every process along dim 0.

        Sizes may differ between processes. With one process the input comes back as it is:

        >>> Accelerator(cpu=True).gather({"preds": torch.tensor([1, 2])})
        {'preds': tensor([1, 2])}
        """
        from ember.data import apply_to_tensors

        return apply_to_tensors(tensor, lambda t: C.gather_varlen(self.strategy, t))

    def gather_for_metrics(self, input_data: Any, use_gather_object: bool = False) -> Any:
        """Gather for evaluation: the padding added to even out the last batch is dropped, so over an
        epoch you get exactly ``len(dataset)`` items. Non-tensor data is gathered as a list of objects.

        >>> from torch.utils.data import DataLoader
        >>> accelerator = Accelerator(cpu=True, verbose=False)
        >>> loader = accelerator.prepare_data_loader(DataLoader(torch.arange(5), batch_size=2))
        >>> torch.cat([accelerator.gather_for_metrics(batch) for batch in loader])
        tensor([0, 1, 2, 3, 4])
        >>> accelerator.gather_for_metrics(["a", "b"])
        ['a', 'b']
        """
        state = self.gradient_state
        if use_gather_object or not _has_tensor(input_data):
            objects = C.gather_objects(self.strategy, input_data)
            # per-item lists (one entry per sample) carry the same end padding as tensors do
            if state.end_of_dataloader and state.padding_in_batch and isinstance(input_data, (list, tuple)):
                objects = objects[: max(0, len(objects) - state.padding_in_batch)]
            return objects
        gathered = self.gather(input_data)
        if state.end_of_dataloader and state.padding_in_batch:
            from ember.data import find_batch_size

            size = find_batch_size(gathered)
            if size is not None:
                gathered = C.trim(gathered, size - state.padding_in_batch)
        return gathered

    def reduce(self, tensor: Any, reduction: str = "sum") -> Any:
        """All-reduce tensors ("sum", "mean", "max", "min") across processes.

        >>> Accelerator(cpu=True).reduce(torch.tensor([1.0, 3.0]), reduction="mean")
        tensor([1., 3.])
        """
        from ember.data import apply_to_tensors

        if reduction not in ("sum", "mean", "max", "min"):
            raise unknown_value("reduction", reduction, ["sum", "mean", "max", "min"])
        return apply_to_tensors(tensor, lambda t: self.strategy.all_reduce(t, reduction))

    def broadcast(self, data: Any, from_process: int = 0) -> Any:
        """Broadcast tensors (in place) or a picklable object from ``from_process``.

        >>> accelerator = Accelerator(cpu=True)
        >>> accelerator.broadcast(torch.tensor([1, 2])), accelerator.broadcast({"seed": 7})
        (tensor([1, 2]), {'seed': 7})
        """
        from ember.data import apply_to_tensors

        if _has_tensor(data):
            return apply_to_tensors(data, lambda t: self.strategy.broadcast(t, from_process))
        return self.strategy.broadcast_object(data, from_process)

    def pad_across_processes(self, tensor: Any, dim: int = 0, pad_index: int = 0, pad_first: bool = False) -> Any:
        """Pad tensors along ``dim`` to the largest size on any process (so they can be gathered).

        >>> Accelerator(cpu=True).pad_across_processes(torch.tensor([[1, 2]]), dim=1, pad_index=-1)
        tensor([[1, 2]])
        """
        return C.pad_across(self.strategy, tensor, dim, pad_index, pad_first)

    def wait_for_everyone(self) -> None:
        """Barrier across all processes.

        >>> Accelerator(cpu=True).wait_for_everyone()  # returns at once with one process
        """
        with faults.named_collective(self.strategy, "wait_for_everyone()", lambda: self.step):
            self.strategy.barrier()

    # ------------------------------------------------------------------------------------------------
    # faults (see ember.faults and docs/faults.md)
    # ------------------------------------------------------------------------------------------------
    def preempted(self, every_n_steps: int = 1) -> bool:
        """True on every rank once any rank got a preemption signal (``handle_signals=True``); call it after
        ``optimizer.step()``. One all-reduce of one int, at most once per optimizer step (every ``every_n_steps``),
        none inside an accumulation window or without ``handle_signals``.

        >>> accelerator = Accelerator(cpu=True, handle_signals=True)
        >>> if accelerator.preempted():       # in the loop
        ...     accelerator.save_state()
        ...     accelerator.exit_preempted()  # exit status ember.faults.PREEMPTED_EXIT_CODE (75)
        >>> accelerator.end_training()
        """
        if self._preemption is None or not self.gradient_state.sync_gradients:
            return False
        return self._preemption.agreed(self.strategy, self.step, self.device, max(1, every_n_steps))

    def exit_preempted(self) -> NoReturn:
        """After :meth:`save_state` once :meth:`preempted` is True: finish trackers, close the process group, exit
        with ``ember.faults.PREEMPTED_EXIT_CODE``.

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
        raise SystemExit(faults.PREEMPTED_EXIT_CODE)

    @contextlib.contextmanager
    def main_process_first(self) -> Iterator[None]:
        """Run the block on the main process first (e.g. to download or preprocess once), then the rest.

        >>> accelerator = Accelerator(cpu=True)
        >>> with accelerator.main_process_first():
        ...     accelerator.print("preparing the dataset")
        preparing the dataset
        """
        if not self.is_main_process:
            self.wait_for_everyone()
        yield
        if self.is_main_process:
            self.wait_for_everyone()

    @contextlib.contextmanager
    def local_main_process_first(self) -> Iterator[None]:
        """:meth:`main_process_first` per machine: local rank 0 runs the block first (node-local caches).

        >>> accelerator = Accelerator(cpu=True)
        >>> with accelerator.local_main_process_first():
        ...     accelerator.print("filling the local cache")
        filling the local cache
        """
        if not self.is_local_main_process:
            self.wait_for_everyone()
        yield
        if self.is_local_main_process:
            self.wait_for_everyone()

    def split_between_processes(self, inputs: Any, apply_padding: bool = False) -> Any:
        """Context manager giving this process its contiguous share of a list/tuple/tensor/dict.

        >>> with Accelerator(cpu=True).split_between_processes(["a", "b", "c"]) as prompts:
        ...     prompts  # all of them with one process; rank r of n gets the r-th contiguous chunk
        ['a', 'b', 'c']
        """
        return C.split_between(self.process.rank, self.process.world_size, inputs, apply_padding)

    # ------------------------------------------------------------------------------------------------
    # models, state, tracking
    # ------------------------------------------------------------------------------------------------
    def unwrap_model(self, model: torch.nn.Module, keep_fp32_wrapper: bool = True) -> torch.nn.Module:
        """The user's module without DDP (or other) wrappers.

        ``keep_fp32_wrapper=False`` also removes the autocast wrapper that mixed precision put on ``forward``.

        >>> accelerator = Accelerator(cpu=True, verbose=False, mixed_precision="bf16")
        >>> model = torch.nn.Linear(2, 1)
        >>> accelerator.unwrap_model(accelerator.prepare(model)) is model
        True
        >>> accelerator.unwrap_model(model, keep_fp32_wrapper=False)(torch.ones(1, 2)).dtype
        torch.float32
        """
        inner = self.strategy.unwrap(model)
        if not keep_fp32_wrapper and "forward" in vars(inner):
            del inner.forward
        return inner

    def get_state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The model's full state dict, without wrapper prefixes (gathered when the strategy shards it).

        >>> accelerator = Accelerator(cpu=True, verbose=False)
        >>> model = accelerator.prepare(torch.nn.Linear(2, 1))
        >>> list(accelerator.get_state_dict(model))
        ['weight', 'bias']
        """
        return self.strategy.model_state_dict(model)

    def save_model(self, model: torch.nn.Module, save_directory: str | os.PathLike[str], **_: Any) -> Path:
        """Write ``model.safetensors`` (unwrapped weights) into ``save_directory`` on the main process.

        >>> import os, tempfile
        >>> accelerator = Accelerator(cpu=True, verbose=False)
        >>> model = accelerator.prepare(torch.nn.Linear(2, 1))
        >>> path = accelerator.save_model(model, os.path.join(tempfile.mkdtemp(), "export"))
        >>> path.name, sorted(os.listdir(path.parent))
        ('model.safetensors', ['model.safetensors'])
        """
        from ember._state import save_model

        return save_model(self, model, Path(save_directory))

    def register_for_checkpointing(self, *objects: Any) -> None:
        """Save and restore these objects (anything with ``state_dict``/``load_state_dict``) with the state.

        >>> import tempfile
        >>> class Counter:
        ...     n = 0
        ...     def state_dict(self): return {"n": self.n}
        ...     def load_state_dict(self, state): self.n = state["n"]
        >>> accelerator = Accelerator(cpu=True, project_dir=tempfile.mkdtemp())
        >>> counter = Counter(); accelerator.register_for_checkpointing(counter)
        >>> counter.n = 5; path = accelerator.save_state(); counter.n = 0
        >>> accelerator.load_state(path) == path, counter.n
        (True, 5)
        """
        bad = [type(o).__name__ for o in objects if not (hasattr(o, "state_dict") and hasattr(o, "load_state_dict"))]
        if bad:
            raise EmberConfigError(
                f"register_for_checkpointing got objects without state_dict/load_state_dict: {bad}. "
                "Add those two methods (returning/accepting plain data and tensors)."
            )
        self._custom_objects.extend(objects)

    def save_state(self, output_dir: str | os.PathLike[str] | None = None, **kwargs: Any) -> Path:
        """Save model(s), optimizer(s), scheduler(s), scaler, RNG, data position and registered objects.

        With no ``output_dir`` it writes ``<project_dir>/checkpoints/step-XXXXXXXX``, updates ``latest`` and, with
        ``keep_last=N``, then deletes all but the newest N. The directory appears atomically; a failure on any
        rank raises on every rank and commits nothing. Call it on every rank, after ``optimizer.step()``.

        >>> import os, tempfile
        >>> accelerator = Accelerator(cpu=True, verbose=False, project_dir=tempfile.mkdtemp())
        >>> model = torch.nn.Linear(2, 1)
        >>> model, optimizer = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
        >>> path = accelerator.save_state(keep_last=2)
        >>> path.name, sorted(os.listdir(path))  # doctest: +NORMALIZE_WHITESPACE
        ('step-00000000', ['README.md', 'manifest.json', 'model.safetensors', 'optimizer.json', 'precision.json',
                           'state-rank0.json', 'state-rank0.safetensors'])
        """
        from ember._state import save_state

        return save_state(self, None if output_dir is None else Path(output_dir), **kwargs)

    def load_state(self, input_dir: str | os.PathLike[str] | None = None, **kwargs: Any) -> Path | None:
        """Restore what :meth:`save_state` wrote. With no path: the newest complete checkpoint under
        ``<project_dir>/checkpoints`` (returns None if there is none yet). Every file is checked against the
        manifest's sha256 (``check_hashes=False``: sizes only); nothing is ever unpickled.

        >>> import tempfile
        >>> accelerator = Accelerator(cpu=True, verbose=False, project_dir=tempfile.mkdtemp())
        >>> model = accelerator.prepare(torch.nn.Linear(2, 1))
        >>> print(accelerator.load_state())  # nothing saved yet: start from scratch
        None
        >>> path = accelerator.save_state()
        >>> with torch.no_grad():
        ...     _ = model.weight.zero_()
        >>> accelerator.load_state() == path, bool(model.weight.abs().sum() > 0)
        (True, True)
        """
        from ember._state import load_state

        return load_state(self, None if input_dir is None else Path(input_dir), **kwargs)

    def init_trackers(
        self, project_name: str, config: dict[str, Any] | None = None, init_kwargs: dict[str, Any] | None = None
    ) -> None:
        """Start the trackers named in ``log_with`` (main process only) and log ``config``.

        >>> import os, tempfile
        >>> accelerator = Accelerator(cpu=True, log_with="csv", project_dir=tempfile.mkdtemp())
        >>> accelerator.init_trackers("demo", config={"lr": 0.1})
        >>> accelerator.log({"loss": 0.5}, step=1); accelerator.end_training()
        >>> sorted(os.listdir(os.path.join(accelerator.project_dir, "logs", "demo", "version_0")))
        ['hparams.yaml', 'metrics.csv']
        """
        self.trackers.init(project_name, config, init_kwargs or {})

    def get_tracker(self, name: str, unwrap: bool = False) -> Any:
        """The tracker (an ember logger) called ``name``; ``unwrap=True`` gives its underlying run/writer.

        >>> import tempfile
        >>> accelerator = Accelerator(cpu=True, log_with="csv", project_dir=tempfile.mkdtemp())
        >>> accelerator.init_trackers("demo")
        >>> type(accelerator.get_tracker("csv")).__name__
        'CSVLogger'
        >>> accelerator.end_training()
        """
        return self.trackers.get(name, unwrap)

    def log(self, values: dict[str, Any], step: int | None = None, log_kwargs: dict[str, Any] | None = None) -> None:
        """Log scalars (tensors are read here, once) to every tracker, on the main process.

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

    def end_training(self) -> None:
        """Finish trackers, wait for every process and close the process group.

        >>> accelerator = Accelerator(cpu=True)
        >>> accelerator.end_training()  # at the end of the script, on every process
        """
        self.trackers.finish()
        self.wait_for_everyone()
        if self._preemption is not None:
            self._preemption.uninstall()
        if self._watchdog is not None:
            self._watchdog.stop()
        self.strategy.teardown()

    def free_memory(self, *objects: Any) -> tuple[Any, ...]:
        """Forget every prepared object, empty the CUDA cache and return one None per argument.

        >>> accelerator = Accelerator(cpu=True, verbose=False)
        >>> model = accelerator.prepare(torch.nn.Linear(2, 1))
        >>> model, = accelerator.free_memory(model)
        >>> print(model)
        None
        """
        self._models.clear()
        self._optimizers.clear()
        self._schedulers.clear()
        self._dataloaders.clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return tuple(None for _ in objects)

    def __repr__(self) -> str:
        return (
            f"Accelerator(strategy={self.strategy.name!r}, device={self.device}, precision={self.precision.name!r}, "
            f"rank={self.process.rank}/{self.process.world_size})"
        )


def _prepare_rank(obj: Any) -> int:
    """Models first (so parameters are placed before optimizers see them), schedulers last."""
    if isinstance(obj, torch.nn.Module):
        return 0
    if isinstance(obj, torch.optim.Optimizer):
        return 1
    if is_scheduler(obj):
        return 3
    return 2


def _has_tensor(data: Any) -> bool:
    found = False

    def mark(t: torch.Tensor) -> torch.Tensor:
        nonlocal found
        found = True
        return t

    from ember.data import apply_to_tensors

    apply_to_tensors(data, mark)
    return found


def _autocast_forward(model: torch.nn.Module, autocast: Callable[[], contextlib.AbstractContextManager[Any]]) -> None:
    """Run ``model.forward`` under autocast, as Accelerate does; the original stays at ``model.__class__.forward``."""
    if "forward" in vars(model):
        return
    original = model.forward

    @functools.wraps(original)
    def forward(*args: Any, **kwargs: Any) -> Any:
        with autocast():
            return original(*args, **kwargs)

    model.forward = forward  # type: ignore[method-assign]


def _move_optimizer_state(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    for state in optimizer.state.values():
        for key, value in list(state.items()):
            if isinstance(value, torch.Tensor) and key != "step" and value.device != device:
                state[key] = value.to(device)

