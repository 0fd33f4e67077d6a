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

This file is the facade: the constructor, the process facts and one-line verbs. Every backend branch lives in a
:class:`~ember.strategies.Strategy` or a :class:`~ember.precision.Precision`; the step in :mod:`ember._stepping`,
preparation in :mod:`ember._objects` and :mod:`ember._prepare`, collectives in :mod:`ember._collectives`,
checkpoints in :mod:`ember._state`, faults in :mod:`ember.faults`.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from ember import _collectives, _objects, _options, _profile, _state, _stepping, _tracking, faults
from ember._env import ProcessInfo
from ember._kinds import ACCELERATE_PRECISION, AcceleratorState, DistributedType
from ember._log import info
from ember._objects import ObjectPreparer, Prepared, check_prepare_args, is_scheduler
from ember._prepare import DataPreparer
from ember._seed import set_seed
from ember._stepping import AcceleratedOptimizer, GradientState, Stepper
from ember.data import skip_first_batches
from ember.precision import Precision
from ember.strategies import Strategy


class Accelerator:
    """Prepare your model, optimizer, data and scheduler; keep your loop.

    Args:
        mixed_precision: "no"/"fp16"/"bf16" or a Lightning string ("32-true", "16-mixed", "bf16-mixed",
            "bf16-true", "16-true", "64-true"), or a :class:`~ember.precision.Precision`. Default: what
            ``ember launch`` was given, else float32. A sharded strategy may bring its own plugin for it.
        gradient_accumulation_steps: micro-batches per optimizer step (use ``accumulate``). Loss scaling
            rule: see ``accumulation_reduction`` and :mod:`ember._stepping`.
        accumulation_reduction: "mean" (default: the step's gradient is the mean of its micro-batches'
            gradients, also for a shorter final window) or "sum" (no rescaling at all). Passing
            ``num_items=`` to :meth:`backward` weights by token counts instead.
        cpu / accelerator: force the CPU (``cpu=True`` or ``accelerator="cpu"``); "cuda"/"gpu" requires CUDA.
        device_placement: move models and batches to the device (default True; per object with
            ``prepare(..., device_placement=[...])``).
        strategy: "auto" (DDP when launched with several processes), any name of
            :func:`ember.strategies.strategy_names`, or a Strategy object.
        kwargs_handlers: e.g. ``[DistributedDataParallelKwargs(find_unused_parameters=True)]``,
            ``InitProcessGroupKwargs(timeout=...)``, ``GradScalerKwargs(...)``.
        timeout: collective timeout (seconds or timedelta) for the process group.
        log_with / project_dir: trackers ("csv", "tensorboard", "wandb", "mlflow", "all", objects) and where
            runs, logs and checkpoints go (default ``./runs``).
        seed: seed every RNG now and the sampler shuffle order; None draws a sampler seed once.
        even_batches: pad the last round so every rank sees the same number of batches (default True).
        step_scheduler_with_optimizer: True (default): a prepared scheduler steps only when its optimizer really
            stepped; False: every ``scheduler.step()`` steps it.
        verbose: say once, at the first ``prepare``, what ember changed on your objects.
        handle_signals: True installs SIGTERM and SIGUSR1 handlers (or pass a list of signals) that only set a
            flag; :meth:`preempted` then agrees on it across ranks at a step boundary. See :mod:`ember.faults`.
        nonfinite: "off" (default), "skip" or "halt": what a step with inf/NaN loss or gradients on any rank
            does, decided identically on every rank (costs one host sync per optimizer step, hence off by
            default; under fp16 the GradScaler already skips overflowing steps). See :mod:`ember.faults`.
        fsdp_plugin / deepspeed_plugin: Accelerate's way to choose a sharded strategy
            (``FullyShardedDataParallelPlugin(...)``, ``DeepSpeedPlugin(zero_stage=2, ...)``); same as passing
            the strategy object.
        project_config / dataloader_config: Accelerate's ``ProjectConfiguration`` (``project_dir``, ``total_limit``
            = checkpoints kept) and ``DataLoaderConfiguration`` (``split_batches``, ``even_batches``), from
            :mod:`ember.utils`.

    >>> accelerator = Accelerator(cpu=True, verbose=False)
    >>> accelerator
    Accelerator(strategy='single', device=cpu, precision='32-true', rank=0/1)
    >>> accelerator.device, accelerator.precision.name
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
        fsdp_plugin: Any = None,
        deepspeed_plugin: Any = None,
        project_config: Any = None,
        dataloader_config: Any = None,
    ) -> None:
        self.process = process if process is not None else ProcessInfo.from_env()
        options = _options.resolve(  # every check, before any process group, model or data work (rule 5)
            self.process, mixed_precision=mixed_precision, gradient_accumulation_steps=gradient_accumulation_steps,
            cpu=cpu, strategy=strategy, kwargs_handlers=kwargs_handlers, timeout=timeout, accelerator=accelerator,
            accumulation_reduction=accumulation_reduction, handle_signals=handle_signals, nonfinite=nonfinite,
            plugins=(fsdp_plugin, deepspeed_plugin),
        )
        self.device, self.strategy = options.device, options.strategy
        self.profile_handler = options.handlers.profile  # ProfileKwargs from kwargs_handlers: profile()'s default
        from ember.utils import DataLoaderConfiguration, ProjectConfiguration

        self.project_configuration = project_config or ProjectConfiguration(project_dir=None)
        project_dir = project_dir if project_dir is not None else self.project_configuration.project_dir
        self.project_dir = Path(project_dir if project_dir is not None else "runs")
        self.dataloader_config = dataloader_config or DataLoaderConfiguration(even_batches=even_batches)
        even_batches = self.dataloader_config.even_batches
        self.verbose, self.device_placement, self.even_batches = verbose, device_placement, even_batches
        self.strategy.bind(self.process, self.device, options.timeout)
        self.strategy.setup_environment()
        self.precision = self.strategy.negotiate_precision(options.precision)
        if seed is not None:
            set_seed(seed)
        self.seed = seed
        self.gradient_state = GradientState(options.accumulation_steps, options.accumulation_reduction)
        self._stepper = Stepper(self.gradient_state, self.precision, self.strategy)
        self._stepper.dp_group, self._stepper.dp_size = self.strategy.dp_group(), self.strategy.topology.dp_size
        if nonfinite != "off":
            self._stepper.guard = faults.NonFiniteGuard(nonfinite, self.strategy)
        self.prepared = Prepared()
        self._notes: list[str] = []
        self._announced = False
        self._trigger = False  # set_trigger() / check_trigger()
        self.data_preparer = DataPreparer(self)
        self._objects = ObjectPreparer(self.strategy, self.precision, self._stepper, self.gradient_state,
                                       self.prepared, self._notes, self.autocast)
        self._objects.step_scheduler_with_optimizer = step_scheduler_with_optimizer
        self._objects.compile = dict(options.launch.dynamo_config)
        from ember._tracking import Trackers

        self.trackers = Trackers(self, log_with)
        self._preemption = faults.PreemptionHandler(options.signals).install() if options.signals else None
        self._watchdog = (  # names the step of a rank that stops making progress (NCCL aborts silently)
            faults.StepWatchdog(self.process.rank, options.timeout.total_seconds(),
                                lambda: self.gradient_state.attempted_steps).start()
            if self.process.world_size > 1 else None
        )

    # ------------------------------------------------------------------------------------------------
    # process facts
    # ------------------------------------------------------------------------------------------------
    @property
    def process_index(self) -> int:
        """Global rank of this process: ``Accelerator(cpu=True).process_index`` → ``0``.

        >>> Accelerator(cpu=True).process_index, Accelerator(cpu=True).local_process_index
        (0, 0)
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

        >>> accelerator = Accelerator(cpu=True)
        >>> accelerator.is_main_process, accelerator.is_local_main_process, accelerator.is_last_process
        (True, True, True)
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
    def distributed_type(self) -> DistributedType:
        """Accelerate's name for how the job is distributed (``NO``, ``MULTI_CPU``, ``MULTI_GPU``, ``FSDP``,
        ``DEEPSPEED``): compares equal to ``accelerate.utils.DistributedType``. ember's own name:
        ``accelerator.strategy.name``.

        >>> accelerator = Accelerator(cpu=True)
        >>> accelerator.distributed_type == "NO", accelerator.strategy.name
        (True, 'single')
        """
        return DistributedType(self.strategy.distributed_type())

    @property
    def mixed_precision(self) -> str:
        """Accelerate's name of the compute precision: ``"no"``, ``"fp16"`` or ``"bf16"``. ember's own name,
        which also tells mixed from true precision: ``accelerator.precision.name``.

        >>> accelerator = Accelerator(cpu=True, mixed_precision="bf16")
        >>> accelerator.mixed_precision, accelerator.precision.name
        ('bf16', 'bf16-mixed')
        """
        return ACCELERATE_PRECISION.get(self.precision.name, "no")

    @property
    def state(self) -> AcceleratorState:
        """Accelerate's ``accelerator.state``: the process facts, device and precision in one read-only view.

        >>> Accelerator(cpu=True).state.num_processes, Accelerator(cpu=True).state.distributed_type
        (1, <DistributedType.NO: 'NO'>)
        """
        return AcceleratorState.of(self)

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

    @gradient_accumulation_steps.setter
    def gradient_accumulation_steps(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            from ember._errors import EmberConfigError

            raise EmberConfigError(f"gradient_accumulation_steps={value!r} must be an integer >= 1.")
        self.gradient_state.accumulation_steps = value

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
        return any(opt.step_was_skipped for opt in self.prepared.optimizers)

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

        Each model is set up by the strategy together with the optimizers that update its parameters. Anything
        else is returned unchanged. A scheduler must be prepared with (or after) its optimizer. What ember
        changed is said once.

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
        check_prepare_args(args, self.prepared.optimizers)
        placement = list(device_placement) if device_placement is not None else [self.device_placement] * len(args)
        if len(placement) != len(args):
            from ember._errors import EmberConfigError

            raise EmberConfigError(f"prepare(): device_placement has {len(placement)} entries for {len(args)} "
                                   "objects; give one bool per object.")
        results: list[Any] = list(args)
        models = [(i, obj) for i, obj in enumerate(args) if isinstance(obj, torch.nn.Module)]
        optimizers = [(i, obj) for i, obj in enumerate(args)
                      if isinstance(obj, torch.optim.Optimizer) and not isinstance(obj, AcceleratedOptimizer)]
        wrapped, by_id = self._objects.models_with_optimizers([(m, placement[i]) for i, m in models],
                                                              [o for _, o in optimizers])
        for (i, _), model in zip(models, wrapped):
            results[i] = model
        for i, opt in optimizers:
            results[i] = by_id[id(opt)]
        for i, obj in enumerate(args):
            if isinstance(obj, DataLoader):
                results[i] = self.prepare_data_loader(obj, device_placement=placement[i])
        for i, obj in enumerate(args):
            if is_scheduler(obj):
                results[i] = self._objects.scheduler(obj)
        self._announce()
        return results[0] if len(results) == 1 else tuple(results)

    def _announce(self) -> None:
        if self.verbose and not self._announced and self._notes and self.is_local_main_process:
            notes = sorted(dict.fromkeys(self._notes), key=lambda n: not n.startswith("model"))  # the model first
            info("; ".join(notes))  # each change said once
            self._announced = True

    def skip_first_batches(self, dataloader: Any, num_batches: int = 0) -> Any:
        """Start the loader's epoch at batch ``num_batches`` of it: :func:`ember.data.skip_first_batches`.

        >>> from torch.utils.data import DataLoader
        >>> accelerator = Accelerator(cpu=True, verbose=False)
        >>> loader = accelerator.prepare(DataLoader(torch.arange(6), batch_size=2))
        >>> [batch.tolist() for batch in accelerator.skip_first_batches(loader, 2)]
        [[4, 5]]
        """
        return skip_first_batches(dataloader, num_batches)

    # ------------------------------------------------------------------------------------------------
    # the verbs, one line each; their examples live beside their code
    # ------------------------------------------------------------------------------------------------
    prepare_model = _objects.prepare_model
    prepare_optimizer = _objects.prepare_optimizer
    prepare_scheduler = _objects.prepare_scheduler
    prepare_data_loader = _objects.prepare_data_loader
    init_module = _objects.init_module
    optimizer_steps = _objects.optimizer_steps
    profile = _profile.profile
    # the step: ember._stepping
    backward = _stepping.backward
    accumulate = _stepping.accumulate
    no_sync = _stepping.no_sync
    autocast = _stepping.autocast
    unscale_gradients = _stepping.unscale_gradients
    clip_grad_norm_ = _stepping.clip_grad_norm_
    clip_grad_value_ = _stepping.clip_grad_value_
    # collectives: ember._collectives
    gather = _collectives.gather
    gather_for_metrics = _collectives.gather_for_metrics
    reduce = _collectives.reduce
    broadcast = _collectives.broadcast
    pad_across_processes = _collectives.pad_across_processes
    wait_for_everyone = _collectives.wait_for_everyone
    main_process_first = _collectives.main_process_first
    local_main_process_first = _collectives.local_main_process_first
    split_between_processes = _collectives.split_between_processes
    on_main_process = _collectives.on_main_process
    on_local_main_process = _collectives.on_local_main_process
    on_last_process = _collectives.on_last_process
    on_process = _collectives.on_process
    set_trigger = _collectives.set_trigger
    check_trigger = _collectives.check_trigger
    # faults: ember.faults (docs/faults.md)
    preempted = faults.preempted
    exit_preempted = faults.exit_preempted
    # state and checkpoints: ember._state
    get_state_dict = _state.get_state_dict
    save_model = _state.save_model
    register_for_checkpointing = _state.register_for_checkpointing
    save_state = _state.save_state
    save = _state.save
    load_state = _state.load_state
    # trackers: ember._tracking
    init_trackers = _tracking.init_trackers
    get_tracker = _tracking.get_tracker
    log = _tracking.log

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
        self.prepared.clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return tuple(None for _ in objects)

    def __repr__(self) -> str:
        return (
            f"Accelerator(strategy={self.strategy.name!r}, device={self.device}, precision={self.precision.name!r}, "
            f"rank={self.process.rank}/{self.process.world_size})"
        )
