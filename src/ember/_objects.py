"""The half of ``prepare`` that handles models, optimizers and schedulers, and the registry of what was prepared.

``prepare`` hands each model to the strategy *together with* the optimizers that own its parameters
(:meth:`ember.strategies.Strategy.setup`): DeepSpeed needs both at once, FSDP rebinds the optimizer to the sharded
parameters. :class:`Prepared` is the one list of prepared objects that saving and loading read.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ember._errors import EmberConfigError
from ember._log import info
from ember._stepping import AcceleratedOptimizer, AcceleratedScheduler
from ember.data import apply_to_tensors
from ember.strategies.base import TrainingSettings

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from ember._stepping import GradientState, Stepper
    from ember.accelerator import Accelerator
    from ember.data import DeviceLoader
    from ember.precision import Precision
    from ember.strategies.base import Strategy


def is_scheduler(obj: Any) -> bool:
    return isinstance(obj, torch.optim.lr_scheduler.LRScheduler) or (
        hasattr(obj, "step") and isinstance(getattr(obj, "optimizer", None), torch.optim.Optimizer)
        and not isinstance(obj, torch.optim.Optimizer)
    )


@dataclass
class Prepared:
    """Everything prepared so far, in preparation order (checkpoints name them ``model``, ``model_1``, ...)."""

    models: list[torch.nn.Module] = field(default_factory=list)
    optimizers: list[AcceleratedOptimizer] = field(default_factory=list)
    schedulers: list[AcceleratedScheduler] = field(default_factory=list)
    dataloaders: list[DeviceLoader] = field(default_factory=list)
    custom_objects: list[Any] = field(default_factory=list)
    #: the prepared model whose parameters each optimizer updates (None: not known)
    owners: dict[int, torch.nn.Module | None] = field(default_factory=dict)

    def clear(self) -> None:
        for items in (self.models, self.optimizers, self.schedulers, self.dataloaders):
            items.clear()
        self.owners.clear()

    def owner(self, optimizer: AcceleratedOptimizer) -> torch.nn.Module | None:
        return self.owners.get(id(optimizer))

    @staticmethod
    def names(prefix: str, items: Sequence[Any]) -> list[str]:
        return [prefix if i == 0 else f"{prefix}_{i}" for i in range(len(items))]

    def named_models(self) -> list[tuple[str, torch.nn.Module]]:
        return list(zip(self.names("model", self.models), self.models))

    def named_optimizers(self) -> list[tuple[str, torch.nn.Module | None, torch.optim.Optimizer]]:
        names = self.names("optimizer", self.optimizers)
        return [(n, self.owner(o), o.optimizer) for n, o in zip(names, self.optimizers)]

    def counts(self) -> dict[str, int]:
        return {"models": len(self.models), "optimizers": len(self.optimizers), "schedulers": len(self.schedulers),
                "custom_objects": len(self.custom_objects)}


def check_prepare_args(args: Sequence[Any], prepared: Sequence[AcceleratedOptimizer]) -> None:
    """Fail before any wrapping if a scheduler comes without its optimizer."""
    optimizers = {id(o) for o in args if isinstance(o, torch.optim.Optimizer)}
    optimizers |= {id(o.optimizer) for o in prepared} | {id(o) for o in prepared}
    for obj in args:
        if is_scheduler(obj) and id(obj.optimizer) not in optimizers:
            raise EmberConfigError(
                f"prepare() got the scheduler {type(obj).__name__} but not its optimizer "
                f"({type(obj.optimizer).__name__}). Pass the optimizer to the same prepare() call (or an "
                "earlier one) so the scheduler steps only when that optimizer really steps."
            )


class ObjectPreparer:
    """Prepares models (with their optimizers), lone optimizers and schedulers into a :class:`Prepared`."""

    def __init__(
        self, strategy: Strategy, precision: Precision, stepper: Stepper, state: GradientState,
        prepared: Prepared, notes: list[str], autocast: Callable[[], contextlib.AbstractContextManager[Any]],
    ) -> None:
        self.strategy, self.precision, self.stepper, self.state = strategy, precision, stepper, state
        self.prepared, self.notes, self.autocast = prepared, notes, autocast
        self.step_scheduler_with_optimizer = True
        #: ``torch.compile`` settings from the launch YAML's ``dynamo_config`` (backend, mode, fullgraph, ...)
        self.compile: dict[str, Any] = {}

    def models_with_optimizers(
        self, models: list[tuple[torch.nn.Module, bool]], optimizers: list[torch.optim.Optimizer]
    ) -> tuple[list[torch.nn.Module], dict[int, AcceleratedOptimizer]]:
        """Set up each model jointly with the optimizers that update its parameters; returns the wrapped models and
        ``id(user optimizer) → prepared optimizer`` for every optimizer (lone ones set up on their own)."""
        out_models: list[torch.nn.Module] = []
        done: dict[int, AcceleratedOptimizer] = {}
        for model, placement in models:
            params = {id(p) for p in model.parameters()}
            mine = [o for o in optimizers if id(o) not in done and _param_ids(o) & params]
            wrapped, stepped = self.setup_model(model, placement, mine)
            out_models.append(wrapped)
            for original, opt in zip(mine, stepped):
                done[id(original)] = self.register_optimizer(opt, wrapped)
        for opt in optimizers:
            if id(opt) not in done:
                done[id(opt)] = self.register_optimizer(self.strategy.setup_optimizer(opt), self._owner_of(opt))
        return out_models, done

    def setup_model(
        self, model: torch.nn.Module, placement: bool, optimizers: list[torch.optim.Optimizer]
    ) -> tuple[torch.nn.Module, list[torch.optim.Optimizer]]:
        model = self.precision.convert_module(model)
        if self.precision.uses_autocast:
            autocast_forward(model, self.autocast, self.strategy.device.type, self.precision)
            self.notes.append(f"model.forward runs under {self.precision.name} autocast")
        if placement:
            model = self.strategy.module_to_device(model)
        else:
            self.notes.append("model left where it is (device_placement=False)")
        wrapped, optimizers = self.strategy.setup(model, optimizers)
        if placement or wrapped is not model:
            self.notes.append(self.strategy.describe())
        if self.compile:
            wrapped = compiled(wrapped, self.compile)
            self.notes.append(f"model compiled (torch.compile, backend={self.compile.get('backend')!r})")
        self.prepared.models.append(wrapped)
        return wrapped, optimizers

    def register_optimizer(self, optimizer: torch.optim.Optimizer, owner: torch.nn.Module | None) -> AcceleratedOptimizer:
        _move_optimizer_state(optimizer, self.strategy.device)
        wrapped = AcceleratedOptimizer(optimizer, self.stepper)
        self.prepared.optimizers.append(wrapped)
        self.prepared.owners[id(wrapped)] = owner
        return wrapped

    def scheduler(self, scheduler: Any) -> AcceleratedScheduler:
        if self.strategy.process.world_size > 1 and not self.prepared.schedulers and self.strategy.process.rank == 0 \
                and self.step_scheduler_with_optimizer:
            info(f"{type(scheduler).__name__} steps once per optimizer step on all {self.strategy.process.world_size} "
                 "processes together (not once per process): size it in optimizer steps, "
                 "accelerator.optimizer_steps(train_loader, epochs), not from the loader's length before prepare()")
        target = getattr(scheduler, "optimizer", None)
        owners = [o for o in self.prepared.optimizers if o.optimizer is target or o is target]
        wrapped = AcceleratedScheduler(scheduler, owners or list(self.prepared.optimizers), self.state,
                                       self.step_scheduler_with_optimizer)
        self.prepared.schedulers.append(wrapped)
        return wrapped

    def _owner_of(self, optimizer: torch.optim.Optimizer) -> torch.nn.Module | None:
        ids = _param_ids(optimizer)
        for model in self.prepared.models:
            if ids & {id(p) for p in model.parameters()}:
                return model
        return None


def compiled(model: torch.nn.Module, settings: dict[str, Any]) -> torch.nn.Module:
    """``torch.compile`` with Accelerate's dynamo settings; ``regional`` compiles each repeated block instead."""
    kwargs = {"backend": settings.get("backend", "inductor"), "fullgraph": bool(settings.get("fullgraph")),
              "dynamic": settings.get("dynamic")}
    if settings.get("mode") not in (None, "default"):
        kwargs["mode"] = settings["mode"]
    if settings.get("regional"):
        for block in {id(m): m for m in model.modules() if isinstance(m, torch.nn.ModuleList)}.values():
            for child in block:
                child.compile(**kwargs)
        return model
    return torch.compile(model, **kwargs)  # type: ignore[return-value]


def _param_ids(optimizer: torch.optim.Optimizer) -> set[int]:
    return {id(p) for group in optimizer.param_groups for p in group["params"]}


def autocast_forward(
    model: torch.nn.Module, autocast: Callable[[], contextlib.AbstractContextManager[Any]], device_type: str,
    precision: Precision,
) -> None:
    """Run ``model.forward`` under autocast, as Accelerate does; the original stays at ``model.__class__.forward``.

    Called outside any autocast region (the Accelerate loop: ``loss_fn(model(x), y)``), the forward's float16 and
    bfloat16 outputs come back as float32, as Accelerate's and Fabric's do: the loss is then computed in float32, and
    a mixed-dtype loss (a bfloat16 output against a float32 target) cannot fail in backward. Called inside autocast
    (``with accelerator.autocast():``, or a Trainer step) the outputs stay as autocast made them, as Lightning's do;
    so they do everywhere when the precision's ``float32_outputs`` is off (the Trainer's setting).
    """
    if "forward" in vars(model):
        return
    original = model.forward

    @functools.wraps(original)
    def forward(*args: Any, **kwargs: Any) -> Any:
        if torch.is_autocast_enabled(device_type):
            return original(*args, **kwargs)
        with autocast():
            out = original(*args, **kwargs)
        return apply_to_tensors(out, _to_float32) if getattr(precision, "float32_outputs", True) else out

    model.forward = forward  # type: ignore[method-assign]


def _to_float32(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _move_optimizer_state(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    for state in optimizer.state.values():
        for key, value in list(state.items()):
            if isinstance(value, torch.Tensor) and key != "step" and value.device != device and not _is_dtensor(value):
                state[key] = value.to(device)


def _is_dtensor(value: torch.Tensor) -> bool:
    return type(value).__name__ == "DTensor"


def init_module(self: Accelerator, empty_init: bool | None = None) -> contextlib.AbstractContextManager[Any]:
    """Build modules inside this block directly where the strategy wants them: on the device, in the dtype of a
    "true" precision, and — for a sharded strategy with ``empty_init=True`` — on the ``meta`` device, materialised
    shard by shard by ``prepare`` (no full copy per rank). Lightning Fabric's ``init_module``.

    >>> from ember import Accelerator
    >>> accelerator = Accelerator(cpu=True, mixed_precision="bf16-true")
    >>> with accelerator.init_module():
    ...     layer = torch.nn.Linear(2, 2)
    >>> layer.weight.device, layer.weight.dtype
    (device(type='cpu'), torch.bfloat16)
    """
    from ember.precision import default_dtype

    stack = contextlib.ExitStack()
    stack.enter_context(self.strategy.module_init_context(empty_init))
    stack.enter_context(default_dtype(self.precision.param_dtype))
    return stack


def optimizer_steps(self: Accelerator, dataloader: Any, epochs: int = 1) -> int:
    """How many optimizer steps ``epochs`` passes over ``dataloader`` take on this job — the number to size a
    learning-rate schedule with. Works on the loader before or after ``prepare``: a prepared loader yields this
    process's share of the batches, and a window that the end of an epoch cuts short still steps.

    ember steps a prepared scheduler once per real optimizer step (Accelerate steps it once per process per step),
    so size schedules in optimizer steps, never from ``len(dataset)`` alone.

    >>> import torch
    >>> from torch.utils.data import DataLoader
    >>> from ember import Accelerator
    >>> accelerator = Accelerator(cpu=True, gradient_accumulation_steps=4)
    >>> loader = DataLoader(torch.zeros(100, 2), batch_size=8)  # 13 batches: windows of 4 → 4 steps per epoch
    >>> accelerator.optimizer_steps(loader, epochs=3)
    12
    """
    from ember.data import DeviceLoader

    world = self.strategy.topology.dp_size
    if isinstance(dataloader, DeviceLoader):
        batches = dataloader.batches_per_epoch  # this process's share of a whole epoch
    elif world == 1:
        batches = len(dataloader)
    else:  # what prepare() will give each process: whole rounds of world x batch (the last one padded or dropped)
        size, batch = len(dataloader.dataset), dataloader.batch_size or 1
        batches = size // (batch * world) if dataloader.drop_last else -(-size // (batch * world))
    steps = -(-batches // self.gradient_accumulation_steps)
    return steps * epochs


def prepare_model(self: Accelerator, model: torch.nn.Module, device_placement: bool | None = None) -> torch.nn.Module:
    """Convert ``model`` to the precision, move it to the device and wrap it for the strategy.

    >>> from ember import Accelerator
    >>> accelerator = Accelerator(cpu=True, verbose=False)
    >>> model = accelerator.prepare_model(torch.nn.Linear(2, 1))
    >>> model.weight.device, accelerator.unwrap_model(model) is model
    (device(type='cpu'), True)
    """
    placement = self.device_placement if device_placement is None else device_placement
    return self._objects.setup_model(model, placement, [])[0]


def prepare_optimizer(self: Accelerator, optimizer: torch.optim.Optimizer) -> AcceleratedOptimizer:
    """Wrap ``optimizer`` so ``step``/``zero_grad`` follow accumulation, precision and skipping.

    >>> from ember import Accelerator
    >>> accelerator = Accelerator(cpu=True, verbose=False)
    >>> model = accelerator.prepare_model(torch.nn.Linear(2, 1))
    >>> optimizer = accelerator.prepare_optimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    >>> type(optimizer).__name__, optimizer.param_groups[0]["lr"]
    ('AcceleratedOptimizer', 0.1)
    """
    return self._objects.models_with_optimizers([], [optimizer])[1][id(optimizer)]


def prepare_scheduler(self: Accelerator, scheduler: Any) -> AcceleratedScheduler:
    """Wrap ``scheduler`` so it steps once per real optimizer step (prepare its optimizer first).

    >>> from ember import Accelerator
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
    return self._objects.scheduler(scheduler)


def prepare_data_loader(
    self: Accelerator, dataloader: DataLoader[Any], device_placement: bool | None = None, *, track_state: bool = True
) -> DeviceLoader:
    """Shard ``dataloader`` across the data-parallel processes and move its batches to the device.

    ``track_state=False`` leaves the loader out of :meth:`save_state` / :meth:`load_state` (evaluation
    loaders that always restart from their beginning), so checkpoints hold only the loaders to resume.

    >>> from ember import Accelerator
    >>> from torch.utils.data import DataLoader
    >>> accelerator = Accelerator(cpu=True, verbose=False)
    >>> loader = accelerator.prepare_data_loader(DataLoader(torch.arange(6.0), batch_size=4))
    >>> [batch.tolist() for batch in loader]
    [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0]]
    """
    placement = self.device_placement if device_placement is None else device_placement
    loader = self.data_preparer.prepare(dataloader, placement, self._notes)
    if track_state:
        self.prepared.dataloaders.append(loader)
        if isinstance(self.strategy, TrainingSettings) and loader.batch_size:  # e.g. DeepSpeed's micro-batch
            self.strategy.set_micro_batch_size(loader.batch_size)
    return loader
