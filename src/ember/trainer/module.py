"""``ember.Module``: a ``torch.nn.Module`` whose hooks the :class:`~ember.Trainer` calls.

Port a LightningModule by changing its base class (``ember.LightningModule`` is an alias)::

    >>> import torch, ember as L
    >>> class Regressor(L.Module):
    ...     def __init__(self, lr=0.1):
    ...         super().__init__()
    ...         self.save_hyperparameters()
    ...         self.net = torch.nn.Linear(4, 1)
    ...     def training_step(self, batch, batch_idx):
    ...         x, y = batch
    ...         loss = torch.nn.functional.mse_loss(self.net(x), y)
    ...         self.log("train_loss", loss, prog_bar=True)
    ...         return loss
    ...     def configure_optimizers(self):
    ...         return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
    >>> Regressor(lr=0.5).hparams.lr
    0.5

**A plain ``nn.Module`` without a subclass.** A model whose ``forward`` returns a loss, or an object/dict with a
``loss`` (every Hugging Face ``transformers`` model given ``labels``), is trained through
:meth:`Module.wrap`::

    trainer.fit(L.Module.wrap(hf_model, optimizer=lambda params: torch.optim.AdamW(params, lr=3e-4)), train_dl)

The adapter calls ``model(**batch)`` for a mapping, ``model(*batch)`` for a tuple/list and ``model(batch)``
otherwise, logs ``train_loss`` / ``val_loss`` / ``test_loss`` (progress bar, epoch means in evaluation,
``sync_dist=True``), and steps an optional scheduler every optimizer step. ``Trainer.fit`` given a plain
``nn.Module`` fails with a message pointing here.

Hook order during ``fit`` is documented in :mod:`ember.trainer.trainer`.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import types
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from ember.trainer._hparams import AttributeDict, hparams_from_call
from ember.trainer.logging import check_log_options

if TYPE_CHECKING:
    from ember.callbacks.base import Callback
    from ember.trainer.trainer import Trainer

__all__ = ["AttributeDict", "LightningModule", "Module"]

#: positional arguments of ``Tensor.backward`` after the tensor, in order
_BACKWARD_ARGS = ("gradient", "retain_graph", "create_graph", "inputs")
_M = TypeVar("_M", bound="Module")


class Module(torch.nn.Module):
    """The structured layer's model: hooks with no-op defaults, ``self.log``, hyperparameters.

    Override ``training_step`` and ``configure_optimizers`` (both required by ``fit``); everything else is
    optional. Set ``self.automatic_optimization = False`` to step optimizers yourself with
    ``self.optimizers()``, ``self.manual_backward(loss)`` and ``opt.step()``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._trainer: Trainer | None = None
        self._automatic_optimization = True
        self._hparams = AttributeDict()
        self._log_hyperparams = True
        self._current_fx_name: str | None = None

    # --------------------------------------------------------------------------------------------
    # trainer-backed properties
    # --------------------------------------------------------------------------------------------
    @property
    def trainer(self) -> Trainer:
        """The Trainer running this module (raises if none is attached yet)."""
        trainer: Trainer | None = self.__dict__.get("_trainer")
        if trainer is None:
            raise RuntimeError(f"{type(self).__name__} is not attached to an ember.Trainer yet.")
        return trainer

    @trainer.setter
    def trainer(self, trainer: Trainer | None) -> None:
        self.__dict__["_trainer"] = trainer

    @property
    def automatic_optimization(self) -> bool:
        """True (default): the Trainer runs backward, clipping, ``step`` and ``zero_grad``."""
        return bool(self.__dict__.get("_automatic_optimization", True))

    @automatic_optimization.setter
    def automatic_optimization(self, value: bool) -> None:
        self.__dict__["_automatic_optimization"] = bool(value)

    @property
    def device(self) -> torch.device:
        for param in self.parameters():
            return param.device
        for buffer in self.buffers():
            return buffer.device
        return torch.device("cpu")

    @property
    def current_epoch(self) -> int:
        trainer = self.__dict__.get("_trainer")
        return trainer.current_epoch if trainer is not None else 0

    @property
    def global_step(self) -> int:
        trainer = self.__dict__.get("_trainer")
        return trainer.global_step if trainer is not None else 0

    @property
    def global_rank(self) -> int:
        trainer = self.__dict__.get("_trainer")
        return trainer.global_rank if trainer is not None else 0

    @property
    def local_rank(self) -> int:
        trainer = self.__dict__.get("_trainer")
        return trainer.local_rank if trainer is not None else 0

    @property
    def logger(self) -> Any:
        trainer = self.__dict__.get("_trainer")
        return trainer.logger if trainer is not None else None

    @property
    def loggers(self) -> list[Any]:
        trainer = self.__dict__.get("_trainer")
        return list(trainer.loggers) if trainer is not None else []

    def print(self, *args: Any, **kwargs: Any) -> None:
        """``print`` on the global rank 0 only."""
        trainer = self.__dict__.get("_trainer")
        if trainer is None or trainer.is_global_zero:
            print(*args, **kwargs)

    # --------------------------------------------------------------------------------------------
    # hyperparameters
    # --------------------------------------------------------------------------------------------
    @property
    def hparams(self) -> AttributeDict:
        """What :meth:`save_hyperparameters` captured (kept in checkpoints, sent to the loggers)."""
        hparams = self.__dict__.get("_hparams")
        if hparams is None:
            hparams = self.__dict__["_hparams"] = AttributeDict()
        return hparams

    def save_hyperparameters(
        self,
        *args: Any,
        ignore: str | Iterable[str] | None = None,
        frame: types.FrameType | None = None,
        logger: bool = True,
    ) -> None:
        """Record the arguments of the calling ``__init__`` in ``self.hparams``.

        ``save_hyperparameters()`` takes every ``__init__`` argument; ``save_hyperparameters("lr", "width")``
        only those; a dict or ``argparse.Namespace`` argument is used as it is. ``ignore`` drops names;
        ``logger=False`` keeps them out of the loggers.

        >>> import ember as L
        >>> class Net(L.Module):
        ...     def __init__(self, width=8, lr=0.1, verbose=False):
        ...         super().__init__()
        ...         self.save_hyperparameters(ignore="verbose")
        >>> Net(width=4).hparams
        {'width': 4, 'lr': 0.1}
        >>> Net().hparams.lr
        0.1
        """
        if frame is None:
            current = inspect.currentframe()
            frame = current.f_back if current is not None else None
        self.hparams.update(hparams_from_call(self, args, ignore, frame))
        self.__dict__["_log_hyperparams"] = logger

    # --------------------------------------------------------------------------------------------
    # logging
    # --------------------------------------------------------------------------------------------
    def log(
        self,
        name: str,
        value: Any,
        prog_bar: bool = False,
        logger: bool | None = None,
        on_step: bool | None = None,
        on_epoch: bool | None = None,
        reduce_fx: str | Callable[..., Any] = "mean",
        enable_graph: bool = False,
        sync_dist: bool = False,
        sync_dist_group: Any = None,
        add_dataloader_idx: bool = True,
        batch_size: int | None = None,
        metric_attribute: str | None = None,
        rank_zero_only: bool = False,
    ) -> None:
        """Log a scalar. It stays on its device; loggers get floats every ``log_every_n_steps``.

        Defaults follow Lightning: in ``training_step`` (and per-batch training hooks) ``on_step=True,
        on_epoch=False``; in validation/test steps and epoch hooks ``on_step=False, on_epoch=True``. With
        both True the loggers see ``<name>_step`` and ``<name>_epoch``. Epoch values are reduced with
        ``reduce_fx`` ("mean" is weighted by ``batch_size``, inferred from the batch when not given);
        ``sync_dist=True`` also reduces across processes when the value is read.

        >>> import torch, ember as L
        >>> from torch.utils.data import DataLoader
        >>> class Net(L.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.w = torch.nn.Parameter(torch.zeros(2))
        ...     def training_step(self, x, batch_idx):
        ...         loss = (x @ self.w - 1).pow(2).mean()
        ...         self.log("loss", loss, on_epoch=True)  # step values and their epoch mean
        ...         return loss
        ...     def configure_optimizers(self):
        ...         return torch.optim.SGD(self.parameters(), lr=0.1)
        >>> trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        ...                     enable_progress_bar=False, enable_model_summary=False)
        >>> model = Net()
        >>> trainer.fit(model, DataLoader(torch.ones(8, 2), batch_size=4))  # doctest: +ELLIPSIS
        [ember] ...
        >>> {name: round(float(value), 4) for name, value in trainer.callback_metrics.items()}
        {'loss': 0.68, 'loss_step': 0.36, 'loss_epoch': 0.68}
        """
        trainer = self.__dict__.get("_trainer")
        if trainer is None:
            warnings.warn(f"self.log({name!r}) ignored: the module is not attached to a Trainer.", stacklevel=2)
            return
        check_log_options(name, enable_graph, sync_dist, sync_dist_group, rank_zero_only)
        if rank_zero_only and not trainer.is_global_zero:
            return  # Lightning's meaning: this value exists on rank 0 only, and is never synchronised
        trainer._log_metric(
            self.__dict__.get("_current_fx_name"), name, value, prog_bar=prog_bar,
            logger=True if logger is None else logger, on_step=on_step, on_epoch=on_epoch,
            reduce_fx=reduce_fx, sync_dist=sync_dist, batch_size=batch_size,
            add_dataloader_idx=add_dataloader_idx,
        )

    def log_dict(
        self,
        dictionary: Mapping[str, Any],
        prog_bar: bool = False,
        logger: bool | None = None,
        on_step: bool | None = None,
        on_epoch: bool | None = None,
        reduce_fx: str | Callable[..., Any] = "mean",
        enable_graph: bool = False,
        sync_dist: bool = False,
        sync_dist_group: Any = None,
        add_dataloader_idx: bool = True,
        batch_size: int | None = None,
        rank_zero_only: bool = False,
    ) -> None:
        """:meth:`log` every item of ``dictionary`` with the same options.

        >>> import torch, ember as L
        >>> from torch.utils.data import DataLoader
        >>> class Net(L.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.w = torch.nn.Parameter(torch.zeros(2))
        ...     def validation_step(self, x, batch_idx):
        ...         error = x @ self.w - 1
        ...         self.log_dict({"val_loss": error.pow(2).mean(), "val_mae": error.abs().mean()})
        >>> trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        ...                     enable_progress_bar=False, enable_model_summary=False)
        >>> loader = DataLoader(torch.ones(8, 2), batch_size=4)
        >>> trainer.validate(Net(), loader, verbose=False)  # doctest: +ELLIPSIS
        [ember] ...
        [{'val_loss': 1.0, 'val_mae': 1.0}]
        """
        for name, value in dictionary.items():
            self.log(
                name, value, prog_bar=prog_bar, logger=logger, on_step=on_step, on_epoch=on_epoch,
                reduce_fx=reduce_fx, sync_dist=sync_dist, add_dataloader_idx=add_dataloader_idx,
                batch_size=batch_size, enable_graph=enable_graph, sync_dist_group=sync_dist_group,
                rank_zero_only=rank_zero_only,
            )

    # --------------------------------------------------------------------------------------------
    # optimisation helpers
    # --------------------------------------------------------------------------------------------
    def optimizers(self, use_pl_optimizer: bool = True) -> Any:
        """The prepared optimizer (one) or list of them (several), as ``configure_optimizers`` returned.

        >>> import torch, ember as L
        >>> from torch.utils.data import DataLoader
        >>> class Net(L.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.w = torch.nn.Parameter(torch.zeros(2))
        ...     def training_step(self, x, batch_idx):
        ...         return (x @ self.w - 1).pow(2).mean()
        ...     def configure_optimizers(self):
        ...         return torch.optim.SGD(self.parameters(), lr=0.1)
        >>> trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        ...                     enable_progress_bar=False, enable_model_summary=False)
        >>> model = Net()
        >>> trainer.fit(model, DataLoader(torch.ones(8, 2), batch_size=4))  # doctest: +ELLIPSIS
        [ember] ...
        >>> optimizer = model.optimizers()
        >>> type(optimizer).__name__, optimizer.param_groups[0]["lr"]
        ('AcceleratedOptimizer', 0.1)
        """
        opts = list(self.trainer._module_optimizers())
        return opts[0] if len(opts) == 1 else opts

    def lr_schedulers(self) -> Any:
        """The prepared scheduler (one), a list (several) or None.

        >>> import torch, ember as L
        >>> from torch.utils.data import DataLoader
        >>> class Net(L.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.w = torch.nn.Parameter(torch.zeros(2))
        ...     def training_step(self, x, batch_idx):
        ...         return (x @ self.w - 1).pow(2).mean()
        ...     def configure_optimizers(self):
        ...         optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        ...         return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)]
        >>> trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        ...                     enable_progress_bar=False, enable_model_summary=False)
        >>> model = Net()
        >>> trainer.fit(model, DataLoader(torch.ones(8, 2), batch_size=4))  # doctest: +ELLIPSIS
        [ember] ...
        >>> model.lr_schedulers().get_last_lr()  # Lightning's default interval: once per epoch
        [0.05]
        """
        scheds = [cfg.scheduler for cfg in self.trainer.lr_scheduler_configs]
        if not scheds:
            return None
        return scheds[0] if len(scheds) == 1 else scheds

    def manual_backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """Backward through the Accelerator (precision scaling, DDP sync) with the backward hooks.

        For manual optimisation (``self.automatic_optimization = False``):

        >>> import torch, ember as L
        >>> from torch.utils.data import DataLoader
        >>> class Net(L.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.w = torch.nn.Parameter(torch.zeros(2))
        ...         self.automatic_optimization = False
        ...     def training_step(self, x, batch_idx):
        ...         optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        ...         self.manual_backward((x @ self.w - 1).pow(2).mean())
        ...         optimizer.step(); optimizer.zero_grad(); scheduler.step()
        ...     def configure_optimizers(self):
        ...         optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        ...         return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)]
        >>> trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        ...                     enable_progress_bar=False, enable_model_summary=False)
        >>> model = Net()
        >>> trainer.fit(model, DataLoader(torch.ones(8, 2), batch_size=4))  # doctest: +ELLIPSIS
        [ember] ...
        >>> trainer.global_step, [round(w, 4) for w in model.w.tolist()]  # lr 0.1, then 0.05
        (2, [0.26, 0.26])
        """
        self.trainer._backward(loss, *args, **kwargs)

    def clip_gradients(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip this optimizer's gradients by norm (default) or value, through the Accelerator."""
        self.trainer._clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def toggle_optimizer(self, optimizer: Any) -> None:
        """Freeze (``requires_grad=False``) every parameter not owned by ``optimizer``; undo with untoggle."""
        owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
        saved = self.__dict__.setdefault("_toggled_requires_grad", {})
        for param in self.parameters():
            if id(param) not in owned:
                saved.setdefault(id(param), (param, param.requires_grad))
                param.requires_grad = False

    def untoggle_optimizer(self, optimizer: Any) -> None:
        """Restore ``requires_grad`` changed by :meth:`toggle_optimizer`."""
        for param, flag in self.__dict__.pop("_toggled_requires_grad", {}).values():
            param.requires_grad = flag

    @contextlib.contextmanager
    def toggled_optimizer(self, optimizer: Any) -> Iterator[None]:
        """``with self.toggled_optimizer(opt):`` — toggle on entry, untoggle on exit."""
        self.toggle_optimizer(optimizer)
        try:
            yield
        finally:
            self.untoggle_optimizer(optimizer)

    # --------------------------------------------------------------------------------------------
    # steps and configuration (override these)
    # --------------------------------------------------------------------------------------------
    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        """Return the loss (a tensor), a dict with ``"loss"``, or None to skip the batch. Required for fit.

        A skipped batch adds no gradient; when it ends an accumulation window, the window still steps with what its
        other batches accumulated, and a window of skipped batches only is dropped (Lightning's rule). With several
        processes skipping is refused: DDP needs every rank's backward.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement training_step(batch, batch_idx).")

    def validation_step(self, *args: Any, **kwargs: Any) -> Any:
        """Evaluate one validation batch (log with ``self.log``)."""

    def test_step(self, *args: Any, **kwargs: Any) -> Any:
        """Evaluate one test batch (log with ``self.log``)."""

    def predict_step(self, *args: Any, **kwargs: Any) -> Any:
        """Return the prediction for one batch (default: ``self(batch)``)."""
        batch = kwargs.get("batch", args[0] if args else None)
        return self(batch)

    def configure_optimizers(self) -> Any:
        """An optimizer, a list, ``([optimizers], [schedulers])``, a dict with ``lr_scheduler``, or a list of
        such dicts. Required for fit."""
        raise NotImplementedError(f"{type(self).__name__} must implement configure_optimizers().")

    def configure_callbacks(self) -> Any:
        """Callbacks to add to the Trainer's (they replace Trainer callbacks of the same type)."""
        return []

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        """Step ``optimizer`` (automatic optimisation). Override e.g. for a manual LR warm-up."""
        optimizer.step()

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: Any) -> None:
        optimizer.zero_grad()

    def configure_gradient_clipping(
        self, optimizer: Any, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None
    ) -> None:
        """Called before each automatic step with the Trainer's clipping flags."""
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        """Step one scheduler (``metric`` is set for ReduceLROnPlateau)."""
        if metric is None:
            scheduler.step()
        else:
            scheduler.step(metric)

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """How the loss is back-propagated (default: through the Accelerator). Positional ``args`` are
        ``Tensor.backward``'s (``gradient, retain_graph, create_graph, inputs``), as in Lightning; ``num_items=``
        weights by item counts (see :meth:`ember.Accelerator.backward`)."""
        if len(args) > len(_BACKWARD_ARGS):
            raise TypeError(f"backward() takes at most {len(_BACKWARD_ARGS)} positional arguments after the loss "
                            f"({', '.join(_BACKWARD_ARGS)}); got {len(args)}.")
        kwargs.update(zip(_BACKWARD_ARGS, args))
        self.trainer.accelerator.backward(loss, **kwargs)

    # --------------------------------------------------------------------------------------------
    # hooks (no-ops); order: see ember.trainer.trainer
    # --------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None: ...
    def configure_model(self) -> None:
        """Build layers here to create them directly where the strategy wants them (``meta`` under FSDP, then
        sharded and materialised); called before every stage, so make it idempotent."""
    def teardown(self, stage: str) -> None: ...
    def on_fit_start(self) -> None: ...
    def on_fit_end(self) -> None: ...
    def on_train_start(self) -> None: ...
    def on_train_end(self) -> None: ...
    def on_train_epoch_start(self) -> None: ...
    def on_train_epoch_end(self) -> None: ...
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> Any: ...
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None: ...
    def on_validation_start(self) -> None: ...
    def on_validation_end(self) -> None: ...
    def on_validation_epoch_start(self) -> None: ...
    def on_validation_epoch_end(self) -> None: ...
    def on_validation_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_validation_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_test_start(self) -> None: ...
    def on_test_end(self) -> None: ...
    def on_test_epoch_start(self) -> None: ...
    def on_test_epoch_end(self) -> None: ...
    def on_test_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_test_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_predict_start(self) -> None: ...
    def on_predict_end(self) -> None: ...
    def on_predict_epoch_start(self) -> None: ...
    def on_predict_epoch_end(self) -> None: ...
    def on_predict_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_predict_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_before_backward(self, loss: torch.Tensor) -> None: ...
    def on_after_backward(self) -> None: ...
    def on_before_optimizer_step(self, optimizer: Any) -> None: ...
    def on_before_zero_grad(self, optimizer: Any) -> None: ...
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None: ...
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None: ...

    @classmethod
    def load_from_checkpoint(
        cls: type[_M], checkpoint_path: str | os.PathLike[str], map_location: Any = None,
        hparams_file: str | os.PathLike[str] | None = None, strict: bool | None = None, **kwargs: Any,
    ) -> _M:
        """Build the module from an ember checkpoint directory: ``cls(**saved hparams, **kwargs)`` + its weights.

        Works on directories from ``trainer.save_checkpoint``, ``ModelCheckpoint`` and ``Accelerator.save_state``
        (which hold no hyperparameters). Files are verified against the manifest; nothing is unpickled.
        ``map_location`` is a device to move the module to.

        >>> import os, tempfile, torch, ember as L
        >>> from torch.utils.data import DataLoader
        >>> class Net(L.Module):
        ...     def __init__(self, width=2, lr=0.1):
        ...         super().__init__()
        ...         self.save_hyperparameters()
        ...         self.w = torch.nn.Parameter(torch.zeros(width))
        ...     def training_step(self, x, batch_idx):
        ...         return (x @ self.w - 1).pow(2).mean()
        ...     def configure_optimizers(self):
        ...         return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
        >>> trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        ...                     enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(Net(lr=0.2), DataLoader(torch.ones(8, 2), batch_size=4))  # doctest: +ELLIPSIS
        [ember] ...
        >>> path = trainer.save_checkpoint(os.path.join(tempfile.mkdtemp(), "net"))
        >>> model = Net.load_from_checkpoint(path, lr=0.5)
        >>> model.hparams, torch.equal(model.w, trainer.lightning_module.w)
        ({'width': 2, 'lr': 0.5}, True)
        """
        from ember.trainer._load import load_from_checkpoint

        return load_from_checkpoint(cls, checkpoint_path, map_location, hparams_file, strict, **kwargs)

    # --------------------------------------------------------------------------------------------
    # a plain nn.Module, no subclass
    # --------------------------------------------------------------------------------------------
    @classmethod
    def wrap(
        cls,
        model: torch.nn.Module,
        optimizer: Callable[[Iterator[torch.nn.Parameter]], torch.optim.Optimizer] | torch.optim.Optimizer,
        lr_scheduler: Callable[[torch.optim.Optimizer], Any] | Any = None,
        lr_scheduler_interval: str = "step",
        batch_size: int = 8,
    ) -> Module:
        """Train a plain ``nn.Module`` (e.g. a Hugging Face model) whose forward returns a loss or ``.loss``.

        ``optimizer`` is a factory called with the parameters (``lambda p: AdamW(p, lr=1e-4)``,
        ``functools.partial(AdamW, lr=1e-4)``) or an optimizer already built on ``model.parameters()``;
        ``lr_scheduler`` a factory called with the optimizer, or a scheduler already built on that optimizer;
        it steps every optimizer step by default (``lr_scheduler_interval="epoch"``: every epoch). A dataset
        (a ``datasets.Dataset``, a list of dicts) can then go to ``fit``/``validate``/``test``/``predict`` where a
        DataLoader would, as with the Hugging Face Trainer: loaders of ``batch_size`` are built with its collation
        (unused columns dropped, padding, ``labels``; see :class:`ember.trainer._collate.DataCollator`).

        >>> import torch, ember as L
        >>> class Net(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.lin = torch.nn.Linear(2, 1)
        ...     def forward(self, x, y):
        ...         return torch.nn.functional.mse_loss(self.lin(x), y)
        >>> module = L.Module.wrap(Net(), optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
        >>> float(module.compute_loss((torch.ones(3, 2), torch.zeros(3, 1))).detach()) >= 0
        True
        """
        from ember.trainer._adapter import WrappedModel

        return WrappedModel(model, optimizer, lr_scheduler, lr_scheduler_interval, batch_size)


LightningModule = Module
"""Alias of :class:`Module`, so ported Lightning code runs with ``import ember as L``."""


def overrides(obj: object, base: type, name: str) -> bool:
    """Whether ``type(obj)`` (or the instance) overrides ``base.name``."""
    if name in getattr(obj, "__dict__", {}):
        return True
    return getattr(type(obj), name, None) is not getattr(base, name, None)


def callbacks_of(module: Module) -> list[Callback]:
    """``module.configure_callbacks()`` as a list."""
    found = module.configure_callbacks()
    if found is None:
        return []
    return list(found) if isinstance(found, (list, tuple)) else [found]
