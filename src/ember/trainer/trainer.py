"""``ember.Trainer``: Lightning's structured loop, built on :class:`ember.Accelerator`.

The Trainer owns one Accelerator (precision, strategy, data sharding, accumulation, checkpoints all live
there) and runs an ordinary loop with it: ``prepare`` → per batch ``accumulate`` / ``backward`` /
``clip_grad_norm_`` / ``optimizer.step`` / ``zero_grad`` → ``save_state`` / ``load_state``.

>>> import torch, ember as L
>>> from torch.utils.data import DataLoader, TensorDataset
>>> class Net(L.Module):
...     def __init__(self):
...         super().__init__()
...         self.lin = torch.nn.Linear(2, 1)
...     def training_step(self, batch, batch_idx):
...         x, y = batch
...         return torch.nn.functional.mse_loss(self.lin(x), y)
...     def configure_optimizers(self):
...         return torch.optim.SGD(self.parameters(), lr=0.1)
>>> data = DataLoader(TensorDataset(torch.randn(8, 2), torch.randn(8, 1)), batch_size=4)
>>> trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
...                     enable_model_summary=False, accelerator="cpu")
>>> trainer.fit(Net(), data)  # doctest: +ELLIPSIS
[ember] ...
>>> trainer.global_step, trainer.current_epoch
(4, 2)

Hook order of ``fit`` (callbacks before the module in each hook; ``*`` = monitoring callbacks such as
ModelCheckpoint/EarlyStopping run after the module's hook)::

    setup("fit") → configure_optimizers → [on_load_checkpoint] → on_fit_start
    → on_sanity_check_start → on_validation_start → on_validation_epoch_start
      → (on_validation_batch_start → validation_step → on_validation_batch_end)×n
      → on_validation_epoch_end → on_validation_end → on_sanity_check_end
    → on_train_start
    → per epoch: on_train_epoch_start
        → per batch: on_train_batch_start → training_step → on_before_backward → backward → on_after_backward
                     → [window end: on_before_optimizer_step → configure_gradient_clipping → optimizer_step
                        → (step-interval schedulers) → on_before_zero_grad → optimizer_zero_grad]
                     → on_train_batch_end → [validation, as above without the sanity hooks]
        → on_train_epoch_end* → (epoch-interval schedulers)
    → on_train_end → on_fit_end → teardown("fit")

``devices=N`` without a distributed launch re-runs the script on N processes: see
:mod:`ember.trainer._launch`. Under ``ember launch``/``torchrun`` the Trainer joins the job.

Faults (see docs/faults.md): ``Trainer(handle_signals=True)`` turns SIGTERM/SIGUSR1 on any rank into a
checkpoint ``<checkpoint dir>/step-XXXXXXXX`` written by every rank at the same optimizer step, then an exit
with status 75 (``ember.faults.PREEMPTED_EXIT_CODE``); the same command with ``fit(..., ckpt_path="last")``
continues exactly. ``nonfinite="skip"|"halt"`` guards each optimizer step against inf/NaN on any rank.
"""

from __future__ import annotations

import atexit
import datetime
import gc
import math
import os
import weakref
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ember._errors import EmberConfigError
from ember._log import info as _log_info
from ember.accelerator import Accelerator
from ember.callbacks.base import Callback
from ember.faults import PREEMPTED_EXIT_CODE
from ember.trainer import _config as cfg
from ember.trainer import _loops, _setup
from ember.trainer._hooks import Hooks
from ember.trainer._launch import auto_devices, check_devices, must_launch, parse_devices, relaunch
from ember.trainer._properties import TrainerProperties
from ember.trainer._state import LoopState, TrainerState
from ember.trainer.logging import MetricsHub
from ember.trainer.module import Module

if TYPE_CHECKING:
    from ember.data import DeviceLoader
    from ember.loggers import Logger
    from ember.profilers import Profiler
    from ember.trainer._optim_config import LRSchedulerConfig


class Trainer(TrainerProperties):
    """Fit, validate, test and predict an :class:`ember.Module`; arguments and semantics mirror Lightning's.

    Unknown arguments and strings fail here, before any process group, model or data work, with a
    "did you mean". ``max_epochs`` defaults to 1000 when neither ``max_epochs`` nor ``max_steps`` is given.
    ``logger=True`` writes TensorBoard files (CSV when tensorboard is not installed) under
    ``default_root_dir`` (default ``./runs``, as the Accelerator's ``project_dir``). ``timeout`` (seconds or a
    ``timedelta``) is the collective timeout of the process group, as ``Accelerator(timeout=...)``: a stalled rank
    makes its peers fail after that long (see docs/faults.md).
    """

    def __init__(
        self,
        accelerator: str = "auto",
        devices: int | str | Sequence[int] = "auto",
        num_nodes: int = 1,
        strategy: Any = "auto",
        precision: Any = "32-true",
        max_epochs: int | None = None,
        min_epochs: int | None = None,
        max_steps: int = -1,
        min_steps: int | None = None,
        max_time: Any = None,
        val_check_interval: int | float | None = None,
        check_val_every_n_epoch: int | None = 1,
        limit_train_batches: int | float | None = None,
        limit_val_batches: int | float | None = None,
        limit_test_batches: int | float | None = None,
        limit_predict_batches: int | float | None = None,
        num_sanity_val_steps: int = 2,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = "norm",
        accumulate_grad_batches: int = 1,
        callbacks: Callback | Sequence[Callback] | None = None,
        logger: Any = True,
        log_every_n_steps: int = 50,
        enable_progress_bar: bool = True,
        enable_checkpointing: bool = True,
        enable_model_summary: bool = True,
        profiler: str | Profiler | None = None,
        deterministic: bool = False,
        benchmark: bool | None = None,
        inference_mode: bool = True,
        detect_anomaly: bool = False,
        sync_batchnorm: bool = False,
        fast_dev_run: int | bool = False,
        overfit_batches: int | float = 0.0,
        default_root_dir: str | os.PathLike[str] | None = None,
        seed: int | None = None,
        handle_signals: bool | Sequence[int | str] = False,
        nonfinite: str = "off",
        timeout: float | datetime.timedelta | None = None,
        **unknown: Any,
    ) -> None:
        cfg.check_unknown(unknown)
        kind = cfg.check_choice("accelerator", accelerator, cfg.ACCELERATOR_NAMES)
        self._precision_flag = cfg.check_precision(precision)
        self._strategy_flag = cfg.check_strategy(strategy)
        self.gradient_clip_algorithm = cfg.check_choice(
            "gradient_clip_algorithm", gradient_clip_algorithm or "norm", cfg.CLIP_ALGORITHMS
        )
        if gradient_clip_val is not None and (isinstance(gradient_clip_val, bool) or gradient_clip_val < 0):
            raise EmberConfigError(f"gradient_clip_val={gradient_clip_val!r} must be a number >= 0 or None.")
        self.gradient_clip_val = gradient_clip_val
        self.num_nodes = int(cfg.check_int("num_nodes", num_nodes, 1) or 1)
        self._accumulate = int(cfg.check_int("accumulate_grad_batches", accumulate_grad_batches, 1) or 1)
        self.log_every_n_steps = int(cfg.check_int("log_every_n_steps", log_every_n_steps, 0) or 0)
        self.num_sanity_val_steps = int(cfg.check_int("num_sanity_val_steps", num_sanity_val_steps, -1) or 0)
        self.fast_dev_run = _setup.parse_fast_dev_run(fast_dev_run)
        self.max_epochs, self.min_epochs = cfg.resolve_epochs(max_epochs, max_steps, min_epochs)
        self.max_steps, self.min_steps = max_steps, int(cfg.check_int("min_steps", min_steps, 0, True) or 0)
        self.max_time = cfg.parse_max_time(max_time)
        self.check_val_every_n_epoch = check_val_every_n_epoch
        self.val_check_interval = cfg.check_val_interval(val_check_interval, check_val_every_n_epoch)
        self.overfit_batches = cfg.parse_limit("overfit_batches", overfit_batches) if overfit_batches else 0
        self.limits = {
            stage: cfg.parse_limit(f"limit_{stage}_batches", value)
            for stage, value in (("train", limit_train_batches), ("val", limit_val_batches),
                                 ("test", limit_test_batches), ("predict", limit_predict_batches))
        }
        _setup.apply_debug_flags(self)
        self.inference_mode, self.detect_anomaly, self.sync_batchnorm = inference_mode, detect_anomaly, sync_batchnorm
        self.deterministic = deterministic
        self.default_root_dir = os.fspath(default_root_dir) if default_root_dir is not None else "runs"
        self._devices = parse_devices(devices, kind)
        check_devices(self._devices, kind)
        self._needs_launch = must_launch(self._devices, self.num_nodes, kind)
        self._world_planned = (self._devices or auto_devices(kind)) * self.num_nodes
        from ember.strategies import resolve_strategy

        planned = resolve_strategy(self._strategy_flag, self._world_planned)  # checked here, before any launch
        if not planned.multiprocess and self._world_planned > 1:
            raise EmberConfigError(
                f"strategy={planned.name!r} trains on one device, but devices={devices!r} asks for "
                f"{self._world_planned} processes. Use strategy='ddp' (or 'auto'), or devices=1."
            )
        self._accelerator_kind = kind
        self._accelerator: Accelerator | None = None
        if not self._needs_launch:
            self._accelerator = Accelerator(
                mixed_precision=self._precision_flag, strategy=self._strategy_flag, accelerator=kind,
                gradient_accumulation_steps=self._accumulate, seed=seed, project_dir=self.default_root_dir,
                handle_signals=handle_signals, nonfinite=nonfinite, timeout=cfg.check_timeout(timeout),
            )
            _setup.apply_backend_flags(deterministic, benchmark)
            if hasattr(self._accelerator.precision, "float32_outputs"):  # Lightning leaves outputs as computed
                self._accelerator.precision.float32_outputs = False
            if self._accelerator.process.world_size > 1:  # test/predict may follow fit: close at exit
                atexit.register(_shutdown, weakref.ref(self), self._accelerator.strategy)
        device = self._accelerator.device if self._accelerator is not None else torch.device("cpu")
        multi = self._accelerator is not None and self._accelerator.num_processes > 1
        self._metrics = MetricsHub(self._reduce, device, agree=self._agree_on_names if multi else None,
                                   warn_unsynced=multi and self.is_global_zero)
        self.callbacks: list[Callback] = _setup.build_callbacks(
            self, callbacks, enable_checkpointing, enable_progress_bar, enable_model_summary
        )
        self.loggers: list[Logger] = [] if self.fast_dev_run else _setup.build_loggers(logger, self.default_root_dir)
        self.profiler: Profiler = _setup.build_profiler(profiler)
        self._profiling = profiler is not None
        self._init_state()
        if self.fast_dev_run and self._accelerator is not None and self.is_global_zero:
            n = self.fast_dev_run
            _log_info(f"fast_dev_run={n}: a quick check with {n} batch(es) per loop, 1 epoch and no sanity check; "
                  "logging (no logger writes) and checkpointing (no checkpoint is saved) are off.")

    def _init_state(self) -> None:
        """What a run fills in: the module, prepared objects, loop counters, status."""
        self._hooks = Hooks(self)
        self.state = TrainerState()
        self._loop = LoopState()
        self.should_stop = False
        self._module: Module | None = None
        self._wrapped: torch.nn.Module | None = None
        self._optimizers: list[Any] = []
        self._manual_optimizers: list[Any] = []
        self._scheduler_configs: list[LRSchedulerConfig] = []
        self._train_loader: DeviceLoader | None = None
        self._eval_loaders: list[DeviceLoader] = []
        self._num_training_batches: float = math.inf
        self._num_eval_batches: list[float] = []
        self._datamodule: Any = None
        self._log_dir: str | None = None
        self._start_time: float | None = None
        self.ckpt_path: str | None = None
        self._told_about: set[str] = set()  # checkpoint names already explained once (not torch.save files)

    # ------------------------------------------------------------------------------------------------
    # entry points
    # ------------------------------------------------------------------------------------------------
    def fit(
        self,
        model: Module,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        datamodule: Any = None,
        ckpt_path: str | os.PathLike[str] | None = None,
    ) -> None:
        """Train ``model``; ``ckpt_path`` resumes from a checkpoint dir, ``"last"`` or ``"best"``.

        >>> import torch, ember as L
        >>> from torch.utils.data import DataLoader
        >>> class Net(L.Module):  # learns w with x @ w == 1; starts at w == 0
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.w = torch.nn.Parameter(torch.zeros(2))
        ...     def forward(self, x):
        ...         return x @ self.w
        ...     def training_step(self, x, batch_idx):
        ...         return (self(x) - 1).pow(2).mean()
        ...     def configure_optimizers(self):
        ...         return torch.optim.SGD(self.parameters(), lr=0.1)
        >>> trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        ...                     enable_progress_bar=False, enable_model_summary=False)
        >>> model = Net()
        >>> trainer.fit(model, DataLoader(torch.ones(8, 2), batch_size=4))  # doctest: +ELLIPSIS
        [ember] model on cpu; ...
        >>> trainer.global_step, trainer.current_epoch, [round(w, 4) for w in model.w.tolist()]
        (2, 1, [0.32, 0.32])
        """
        self._launch_if_needed()
        module = _setup.as_module(model, "fit")
        if datamodule is None and _setup.is_datamodule(train_dataloaders):
            datamodule, train_dataloaders = train_dataloaders, None
        self._run("fit", module, lambda: _setup.fit(self, module, train_dataloaders, val_dataloaders,
                                                     datamodule, ckpt_path))

    def validate(
        self, model: Module | None = None, dataloaders: Any = None, ckpt_path: str | None = None,
        verbose: bool = True, datamodule: Any = None,
    ) -> list[dict[str, float]]:
        """Run one validation epoch; returns one dict of metrics per dataloader.

        Without ``model`` it evaluates the module of the last ``fit``. ``verbose`` prints the results.

        >>> import torch, ember as L
        >>> from torch.utils.data import DataLoader
        >>> class Net(L.Module):  # predicts x @ w, with w == 0
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.w = torch.nn.Parameter(torch.zeros(2))
        ...     def forward(self, x):
        ...         return x @ self.w
        ...     def validation_step(self, x, batch_idx):
        ...         error = self(x) - 1
        ...         self.log_dict({"val_loss": error.pow(2).mean(), "val_mae": error.abs().mean()})
        >>> trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        ...                     enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.validate(Net(), DataLoader(torch.ones(8, 2), batch_size=4))  # doctest: +ELLIPSIS
        [ember] ...
        [ember] validate results (dataloader 0): val_loss=1, val_mae=1
        [{'val_loss': 1.0, 'val_mae': 1.0}]
        """
        return self._evaluate("validate", model, dataloaders, ckpt_path, verbose, datamodule)

    def test(
        self, model: Module | None = None, dataloaders: Any = None, ckpt_path: str | None = None,
        verbose: bool = True, datamodule: Any = None,
    ) -> list[dict[str, float]]:
        """Run one test epoch; returns one dict of metrics per dataloader.

        >>> import torch, ember as L
        >>> from torch.utils.data import DataLoader
        >>> class Net(L.Module):  # predicts x @ w, with w == 0
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.w = torch.nn.Parameter(torch.zeros(2))
        ...     def forward(self, x):
        ...         return x @ self.w
        ...     def test_step(self, x, batch_idx):
        ...         self.log("test_loss", (self(x) - 1).pow(2).mean())
        >>> trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        ...                     enable_progress_bar=False, enable_model_summary=False)
        >>> loader = DataLoader(torch.ones(8, 2), batch_size=4)
        >>> trainer.test(Net(), loader, verbose=False)  # doctest: +ELLIPSIS
        [ember] ...
        [{'test_loss': 1.0}]
        """
        return self._evaluate("test", model, dataloaders, ckpt_path, verbose, datamodule)

    def predict(
        self, model: Module | None = None, dataloaders: Any = None, datamodule: Any = None,
        return_predictions: bool | None = None, ckpt_path: str | None = None,
    ) -> list[Any] | None:
        """Collect ``predict_step`` outputs (a list per dataloader when there are several).

        The default ``predict_step`` returns ``self(batch)``:

        >>> import torch, ember as L
        >>> from torch.utils.data import DataLoader
        >>> class Net(L.Module):  # predicts x @ w, with w == 0
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.w = torch.nn.Parameter(torch.zeros(2))
        ...     def forward(self, x):
        ...         return x @ self.w
        >>> trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        ...                     enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.predict(Net(), DataLoader(torch.ones(4, 2), batch_size=2))  # doctest: +ELLIPSIS
        [ember] ...
        [tensor([0., 0.]), tensor([0., 0.])]
        """
        self._launch_if_needed()
        module = _setup.as_module(model if model is not None else self._module, "predict")
        out: list[Any] = []
        self._run("predict", module, lambda: out.extend(
            _setup.predict(self, module, dataloaders, datamodule, ckpt_path)))
        return out if return_predictions is not False else None

    def _evaluate(
        self, stage: str, model: Module | None, dataloaders: Any, ckpt_path: str | None, verbose: bool,
        datamodule: Any,
    ) -> list[dict[str, float]]:
        self._launch_if_needed()
        module = _setup.as_module(model if model is not None else self._module, stage)
        if datamodule is None and _setup.is_datamodule(dataloaders):
            datamodule, dataloaders = dataloaders, None
        out: list[dict[str, float]] = []
        self._run(stage, module, lambda: out.extend(
            _setup.evaluate(self, module, stage, dataloaders, datamodule, ckpt_path, verbose)))
        return out

    def _launch_if_needed(self) -> None:
        if self._needs_launch:
            relaunch(self._world_planned, self._accelerator_kind)

    def _run(self, stage: str, module: Module, body: Callable[[], None]) -> None:
        self.state = TrainerState(fn=stage, stage=stage if stage != "fit" else "train", status="running")
        self._metrics.reset_metrics()  # each entry point starts with empty metric dicts, as in Lightning
        self._module = module
        module.trainer = self
        self._hooks.reset()
        if self._profiling:
            self.profiler.setup(stage, self.local_rank, self._log_dir or self.default_root_dir)
        try:
            with torch.autograd.set_detect_anomaly(self.detect_anomaly) if self.detect_anomaly else nullcontext():
                body()
        except BaseException as err:
            preempted = isinstance(err, SystemExit) and err.code == PREEMPTED_EXIT_CODE
            self.state.status = "interrupted" if isinstance(err, KeyboardInterrupt) or preempted else "failed"
            if not preempted:  # a preempted run saved its checkpoint already and exits on purpose
                self._hooks.callbacks("on_exception", err)
            _setup.finalize_loggers(self, self.state.status)
            if self._profiling:  # stop a running torch.profiler, close open actions
                self.profiler.teardown(stage)
            raise
        finally:
            self._metrics.active = None
            self.state.stage = None
        self.state.status = "finished"
        _setup.teardown(self, stage)

    # ------------------------------------------------------------------------------------------------
    # checkpoints
    # ------------------------------------------------------------------------------------------------
    def save_checkpoint(
        self, filepath: str | os.PathLike[str], weights_only: bool = False, storage_options: Any = None
    ) -> Path:
        """Write a checkpoint directory through ``Accelerator.save_state`` (collective: call on every rank).

        The checkpoint is a directory, not a ``torch.save`` file (``torch.load`` cannot open it; its ``README.md``
        says how to load it). Nothing else is written next to a path of your own; in ModelCheckpoint's folder a
        ``latest`` file points at the newest checkpoint. Resume with ``fit(..., ckpt_path=path)``, or rebuild the
        module with ``MyModule.load_from_checkpoint(path)``:

        >>> import os, tempfile
        >>> import torch, ember as L
        >>> from torch.utils.data import DataLoader
        >>> class Net(L.Module):  # learns w with x @ w == 1; starts at w == 0
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.w = torch.nn.Parameter(torch.zeros(2))
        ...     def forward(self, x):
        ...         return x @ self.w
        ...     def training_step(self, x, batch_idx):
        ...         return (self(x) - 1).pow(2).mean()
        ...     def configure_optimizers(self):
        ...         return torch.optim.SGD(self.parameters(), lr=0.1)
        >>> trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        ...                     enable_progress_bar=False, enable_model_summary=False)
        >>> data = DataLoader(torch.ones(8, 2), batch_size=4)
        >>> trainer.fit(Net(), data)  # doctest: +ELLIPSIS
        [ember] ...
        >>> path = trainer.save_checkpoint(os.path.join(tempfile.mkdtemp(), "epoch-1"))
        >>> sorted(os.listdir(path))  # doctest: +NORMALIZE_WHITESPACE
        ['README.md', 'manifest.json', 'model.safetensors', 'optimizer.json', 'precision.json', 'state-rank0.json',
         'state-rank0.safetensors', 'trainer.json']
        >>> trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
        ...                     enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(Net(), data, ckpt_path=path)  # doctest: +ELLIPSIS
        [ember] ...
        >>> trainer.global_step, trainer.current_epoch  # the second epoch only
        (4, 2)
        """
        from ember.trainer._checkpoint import save

        if weights_only or storage_options is not None:
            raise EmberConfigError(
                "save_checkpoint(weights_only=True / storage_options=...) is not supported: an ember checkpoint is a "
                "local directory holding everything needed to resume. For weights alone use "
                "trainer.accelerator.save_model(module, directory) (one model.safetensors, any world size).")
        return save(self, Path(filepath))

    # ------------------------------------------------------------------------------------------------
    # hooks used by Module
    # ------------------------------------------------------------------------------------------------
    def _log_metric(self, fx: str | None, name: str, value: Any, **kwargs: Any) -> None:
        self._metrics.log(fx, name, value, **kwargs)

    def _backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        _loops.backward(self, loss, *args, **kwargs)

    def _clip_gradients(self, optimizer: Any, value: float | None, algorithm: str | None) -> None:
        _loops.clip_gradients(self, optimizer, value, algorithm)

    def _module_optimizers(self) -> list[Any]:
        return self._manual_optimizers or list(self._optimizers)

    def _agree_on_names(self, names: list[str]) -> None:
        from ember._collectives import gather_objects
        from ember.trainer.logging import agree_on_names

        acc = self.accelerator
        agree_on_names(names, self._reduce, lambda mine: gather_objects(acc.strategy, [mine]), acc.device)

    def _reduce(self, tensor: torch.Tensor, op: str) -> torch.Tensor:
        if self._accelerator is None:
            return tensor
        reduced: torch.Tensor = self._accelerator.reduce(tensor, op)
        return reduced

    def __repr__(self) -> str:
        return f"Trainer(precision={self.precision!r}, world_size={self.world_size}, max_epochs={self.max_epochs})"


def _shutdown(trainer_ref: weakref.ref[Trainer], strategy: Any) -> None:
    """At interpreter exit: drop the wrapped model, then let the strategy close the process group it opened.

    A DDP wrapper (its reducer holds the last gloo/NCCL work) or a group still alive when the interpreter tears
    down can abort the process ("terminate called without an active exception" under gloo).
    """
    trainer = trainer_ref()
    if trainer is not None:
        trainer._wrapped = None
        if trainer._accelerator is not None:
            trainer._accelerator.free_memory()
        del trainer
    gc.collect()
    strategy.teardown()
