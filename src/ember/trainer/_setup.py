"""Building the Trainer's parts and setting up each stage (checks first, then data, model, optimizers)."""

from __future__ import annotations

import datetime
import importlib.util
import inspect
import math
import os
import time
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, IterableDataset, SequentialSampler

from ember._errors import EmberConfigError
from ember._log import info as _log_info
from ember.callbacks.base import Callback
from ember.data import rebuild_dataloader
from ember.trainer import _checkpoint, _loops
from ember.trainer._config import apply_limit
from ember.trainer._optim_config import ModuleOptimizer, parse_optimizers
from ember.trainer.datamodule import DataModule
from ember.trainer.module import Module, callbacks_of, overrides

if TYPE_CHECKING:
    from ember.loggers import Logger
    from ember.profilers import Profiler
    from ember.trainer.trainer import Trainer

_STEP_METHOD = {"validate": "validation_step", "test": "test_step", "predict": "predict_step"}
_LIMIT_KEY = {"fit": "val", "validate": "val", "test": "test", "predict": "predict"}


# ----------------------------------------------------------------------------------------------------
# building (Trainer.__init__)
# ----------------------------------------------------------------------------------------------------
def parse_fast_dev_run(value: int | bool) -> int:
    if isinstance(value, bool):
        return int(value)
    if not isinstance(value, int) or value < 0:
        raise EmberConfigError(f"fast_dev_run={value!r} must be a bool or an integer >= 0 (batches per loop).")
    return value


def apply_debug_flags(t: Trainer) -> None:
    """``fast_dev_run=n``: n batches of each loop, one epoch, no sanity check, loggers or checkpoints;
    ``overfit_batches``: the same (unshuffled) training batches every epoch and that many validation batches."""
    if t.fast_dev_run:
        n = t.fast_dev_run
        t.limits = dict.fromkeys(t.limits, n)
        t.max_epochs, t.max_steps, t.num_sanity_val_steps = 1, n, 0
        t.val_check_interval, t.check_val_every_n_epoch = 1.0, 1
    elif t.overfit_batches:
        t.limits["train"] = t.limits["val"] = t.overfit_batches


def apply_backend_flags(deterministic: bool, benchmark: bool | None) -> None:
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    if benchmark is not None or deterministic:
        torch.backends.cudnn.benchmark = bool(benchmark) and not deterministic


def build_callbacks(
    t: Trainer, callbacks: Callback | Sequence[Callback] | None, checkpointing: bool, progress_bar: bool,
    summary: bool,
) -> list[Callback]:
    from ember import callbacks as cbs

    items = [] if callbacks is None else [callbacks] if isinstance(callbacks, Callback) else list(callbacks)
    bad = [type(c).__name__ for c in items if not isinstance(c, Callback)]
    if bad:
        raise EmberConfigError(f"callbacks must be ember.callbacks.Callback instances; got {bad}.")
    has_ckpt = any(isinstance(c, cbs.ModelCheckpoint) for c in items)
    if has_ckpt and not checkpointing:
        raise EmberConfigError("enable_checkpointing=False but callbacks contain a ModelCheckpoint; remove one.")
    if checkpointing and not has_ckpt:
        items.append(cbs.ModelCheckpoint())
    has_bar = any(isinstance(c, cbs.ProgressBar) for c in items)
    if has_bar and not progress_bar:
        raise EmberConfigError("enable_progress_bar=False but callbacks contain a progress bar; remove one.")
    if progress_bar and not has_bar:
        items.append(cbs.default_progress_bar())
    if summary and not any(isinstance(c, cbs.ModelSummary) for c in items):
        items.append(cbs.ModelSummary())
    if t.max_time is not None:  # Trainer(max_time=...) is a Timer (as Lightning)
        if any(isinstance(c, cbs.Timer) for c in items):
            if t.is_global_zero:
                _log_info("Trainer(max_time=...) is ignored: the callbacks already contain a Timer.")
        else:
            items.append(cbs.Timer(duration=datetime.timedelta(seconds=t.max_time), interval="step"))
    return ordered(items)


def ordered(items: list[Callback]) -> list[Callback]:
    """Checkpoint callbacks last, so a checkpoint sees what every other callback did (as Lightning)."""
    from ember.callbacks import ModelCheckpoint

    return [c for c in items if not isinstance(c, ModelCheckpoint)] + [c for c in items if isinstance(c, ModelCheckpoint)]


def build_loggers(logger: Any, root: str) -> list[Logger]:
    from ember.loggers import CSVLogger, Logger, TensorBoardLogger

    if logger is True:
        if importlib.util.find_spec("tensorboard") is not None:
            return [TensorBoardLogger(root)]
        return [CSVLogger(root)]
    if logger is None or logger is False:
        return []
    items = list(logger) if isinstance(logger, (list, tuple)) else [logger]
    bad = [type(x).__name__ for x in items if not isinstance(x, Logger)]
    if bad:
        raise EmberConfigError(f"logger must be True/False, an ember.loggers.Logger or a list of them; got {bad}.")
    return items


def build_profiler(value: Any) -> Profiler:
    from ember.profilers import resolve_profiler

    try:
        return resolve_profiler(value)
    except (TypeError, ValueError) as err:
        raise EmberConfigError(f"profiler={value!r}: {err}") from err


def as_module(model: Any, stage: str) -> Module:
    if isinstance(model, Module):
        return model
    if model is None:
        raise EmberConfigError(f"{stage}() needs a model: pass it, or call fit(model, ...) first.")
    if isinstance(model, torch.nn.Module):
        raise EmberConfigError(
            f"{stage}() got a plain torch.nn.Module ({type(model).__name__}). Wrap it: "
            "ember.Module.wrap(model, optimizer=lambda params: torch.optim.AdamW(params, lr=1e-4)) trains any "
            "model whose forward returns a loss or an output with .loss; or subclass ember.Module."
        )
    raise EmberConfigError(f"{stage}() expects an ember.Module, got {type(model).__name__}.")


def is_datamodule(obj: Any) -> bool:
    if isinstance(obj, DataModule):
        return True
    return obj is not None and not isinstance(obj, (DataLoader, list, tuple, dict)) and any(
        hasattr(obj, f"{s}_dataloader") for s in ("train", "val", "test", "predict"))


def local_log_dir(t: Trainer) -> str:
    if t.loggers:
        found = t.loggers[0].log_dir or t.loggers[0].save_dir
        if found:
            return found
    return t.default_root_dir


def finalize_loggers(t: Trainer, status: str) -> None:
    if t.is_global_zero:
        for logger in t.loggers:
            logger.finalize(status)


# ----------------------------------------------------------------------------------------------------
# stages
# ----------------------------------------------------------------------------------------------------
def check_fit(t: Trainer, module: Module) -> None:
    """Everything that can be wrong before data or model work starts."""
    name = type(module).__name__
    if not overrides(module, Module, "training_step"):
        raise EmberConfigError(f"{name} has no training_step(batch, batch_idx); define it (return the loss) to fit.")
    if not overrides(module, Module, "configure_optimizers"):
        raise EmberConfigError(f"{name} has no configure_optimizers(); define it (return an optimizer) to fit.")
    if not module.automatic_optimization:
        if t.gradient_clip_val:
            raise EmberConfigError(
                f"gradient_clip_val={t.gradient_clip_val} with manual optimisation ({name}.automatic_optimization "
                f"is False): clip in training_step with self.clip_gradients(opt, gradient_clip_val="
                f"{t.gradient_clip_val}, gradient_clip_algorithm={t.gradient_clip_algorithm!r}) before opt.step(), "
                "and remove gradient_clip_val from the Trainer."
            )
        if t.accumulate_grad_batches > 1:
            raise EmberConfigError(
                f"accumulate_grad_batches={t.accumulate_grad_batches} with manual optimisation: accumulate in "
                "training_step yourself (step every N batches) and remove the Trainer flag."
            )


def _call_datamodule(t: Trainer, datamodule: Any, stage: str) -> None:
    t._datamodule = datamodule
    if datamodule is None:
        return
    if isinstance(datamodule, DataModule):
        datamodule.trainer = t
    if hasattr(datamodule, "prepare_data"):
        per_node = getattr(datamodule, "prepare_data_per_node", True)
        acc = t.accelerator
        if acc.is_local_main_process if per_node else acc.is_main_process:
            datamodule.prepare_data()
        acc.wait_for_everyone()
    if hasattr(datamodule, "setup"):
        datamodule.setup(stage)


def _loaders(kind: str, given: Any, datamodule: Any, module: Module) -> Any:
    if given is not None:
        return _from_dataset(kind, given, module)
    for owner in (datamodule, module):
        method = getattr(owner, f"{kind}_dataloader", None) if owner is not None else None
        if callable(method):
            return method()
    return None


def _from_dataset(kind: str, given: Any, module: Module) -> Any:
    """A dataset passed where a DataLoader goes: loaded by :meth:`Module.wrap`'s adapter as the HF Trainer would."""
    from ember.trainer._collate import is_dataset

    if isinstance(given, (list, tuple)) and given and all(isinstance(x, DataLoader) for x in given):
        return given
    if not is_dataset(given):
        return given
    make = getattr(module, "dataloader_for", None)
    if make is None:
        arg = "train_dataloaders" if kind == "train" else "dataloaders" if kind != "val" else "val_dataloaders"
        raise EmberConfigError(
            f"{arg} got a dataset ({type(given).__name__}), not a DataLoader. Wrap it: DataLoader(dataset, "
            "batch_size=..., shuffle=True); or train a plain model through Module.wrap(model, optimizer=..., "
            "batch_size=8), which takes datasets as the Hugging Face Trainer does."
        )
    return make(given, train=kind == "train")


def _begin(t: Trainer, module: Module, stage: str, datamodule: Any) -> None:
    extra = [c for c in callbacks_of(module) if c not in t.callbacks]
    if extra:
        kinds = {type(c) for c in extra}
        t.callbacks = ordered([c for c in t.callbacks if type(c) not in kinds] + extra)
        t._hooks.reset()
    _call_datamodule(t, datamodule, stage)
    t._log_dir = t.accelerator.broadcast(local_log_dir(t))
    t._hooks.call("setup", stage)


def fit(t: Trainer, module: Module, train: Any, val: Any, datamodule: Any, ckpt_path: Any) -> None:
    check_fit(t, module)
    t.accelerator.free_memory()  # a fresh registry for this fit: checkpoints hold exactly what it prepares
    t._wrapped, t.should_stop = None, False
    preloaded = _checkpoint.preload_loggers(t, ckpt_path)
    _begin(t, module, "fit", datamodule)
    train_loader = check_train_loader(t, _loaders("train", train, datamodule, module))
    val = _loaders("val", val, datamodule, module)
    if val is not None and not overrides(module, Module, "validation_step"):
        warnings.warn(f"{type(module).__name__} has no validation_step: the validation data is not used.", stacklevel=3)
        val = None
    setup_fit(t, module, train_loader)
    warn_if_never_logged(t)
    prepare_eval(t, val, "fit")
    _checkpoint.restore(t, ckpt_path, loggers=not preloaded)
    log_hyperparams(t, module)
    t._start_time = time.monotonic()
    _loops.fit_loop(t)


def evaluate(
    t: Trainer, module: Module, stage: str, loaders: Any, datamodule: Any, ckpt_path: Any, verbose: bool
) -> list[dict[str, float]]:
    method = _STEP_METHOD[stage]
    if not overrides(module, Module, method):
        raise EmberConfigError(f"{stage}() needs {type(module).__name__}.{method}(batch, batch_idx); define it.")
    _begin(t, module, stage, datamodule)
    found = _loaders("val" if stage == "validate" else stage, loaders, datamodule, module)
    if found is None:
        raise EmberConfigError(f"{stage}() needs data: pass dataloaders=..., or a datamodule with it.")
    prepare_eval(t, found, stage)
    setup_model(t, module)
    _checkpoint.load_weights(t, ckpt_path)
    t.state.stage = stage
    t._loop.log_step = t._loop.batches_that_stepped
    kind = "validation" if stage == "validate" else "test"
    logged = _loops.eval_epoch(t, kind, list(t._num_eval_batches))
    _loops.send(t, logged)
    results = _split_by_loader(logged, len(t._eval_loaders))
    if verbose and t.is_global_zero:
        for i, result in enumerate(results):
            _log_info(f"{stage} results (dataloader {i}): " + ", ".join(f"{k}={v:.4g}" for k, v in result.items()))
    return results


def _split_by_loader(logged: dict[str, Any], count: int) -> list[dict[str, float]]:
    from ember.trainer.logging import to_floats

    values = to_floats(logged)
    if count <= 1:
        return [values]
    return [{k: v for k, v in values.items() if k.endswith(f"/dataloader_idx_{i}")} for i in range(count)]


def predict(t: Trainer, module: Module, loaders: Any, datamodule: Any, ckpt_path: Any) -> list[Any]:
    _begin(t, module, "predict", datamodule)
    found = _loaders("predict", loaders, datamodule, module)
    if found is None:
        raise EmberConfigError("predict() needs data: pass dataloaders=..., or a datamodule with predict_dataloader().")
    prepare_eval(t, found, "predict")
    setup_model(t, module)
    _checkpoint.load_weights(t, ckpt_path)
    t.state.stage = "predict"
    results = _loops.predict_loop(t, list(t._num_eval_batches))
    return results[0] if len(results) == 1 else list(results)


def teardown(t: Trainer, stage: str) -> None:
    t._hooks.call("teardown", stage)
    if t._datamodule is not None and hasattr(t._datamodule, "teardown"):
        t._datamodule.teardown(stage)
    finalize_loggers(t, "success")
    if t._profiling:
        t.profiler.describe()
        t.profiler.teardown(stage)


# ----------------------------------------------------------------------------------------------------
# data, model, optimizers
# ----------------------------------------------------------------------------------------------------
def _length(loader: Any) -> float:
    try:
        return float(len(loader))
    except TypeError:
        return math.inf


def check_train_loader(t: Trainer, dataloader: Any) -> DataLoader[Any]:
    if dataloader is None:
        raise EmberConfigError("fit() needs training data: pass train_dataloaders=..., a datamodule with "
                               "train_dataloader(), or define train_dataloader() on the module.")
    if not isinstance(dataloader, DataLoader):
        raise EmberConfigError(f"train_dataloaders must be a torch DataLoader, got {type(dataloader).__name__}.")
    if t.overfit_batches and not isinstance(dataloader.dataset, IterableDataset):
        dataloader = rebuild_dataloader(dataloader, sampler=SequentialSampler(dataloader.dataset))  # type: ignore[arg-type]
    loader: DataLoader[Any] = seed_workers(dataloader)
    return loader


def seed_workers(dataloader: DataLoader[Any]) -> DataLoader[Any]:
    """After ``seed_everything(..., workers=True)``: a loader with workers and no ``worker_init_fn`` gets ember's
    :func:`~ember.trainer.seed.seed_worker` (NumPy and ``random`` seeded per worker), as Lightning adds its own."""
    from ember.trainer.seed import seed_worker, workers_seeded

    if dataloader.num_workers > 0 and dataloader.worker_init_fn is None and workers_seeded():
        dataloader.worker_init_fn = seed_worker
    return dataloader


def warn_if_never_logged(t: Trainer) -> None:
    """Lightning's warning: an epoch shorter than ``log_every_n_steps`` gets no step-level logs in it."""
    batches, every = t.num_training_batches, t.log_every_n_steps
    if t.loggers and not t.fast_dev_run and every > 0 and batches < every and t.is_global_zero:
        warnings.warn(
            f"The training epoch has {batches:g} batches, fewer than Trainer(log_every_n_steps={every}): step "
            f"metrics are sent to the loggers every {every} optimizer steps, so an epoch passes without any (and a "
            f"fit shorter than {every} steps logs none). Pass a lower log_every_n_steps to see them.",
            UserWarning, stacklevel=6,  # the user's trainer.fit(...) line
        )


def _count_train_batches(t: Trainer) -> None:
    t._num_training_batches = apply_limit(t.limits["train"], _length(t._train_loader))
    interval = t.val_check_interval
    if isinstance(interval, int) and t.check_val_every_n_epoch is not None and interval > t._num_training_batches:
        raise EmberConfigError(
            f"val_check_interval={interval} is more than the {t._num_training_batches:g} training batches of an "
            "epoch. Use a smaller value, or check_val_every_n_epoch=None to count batches across epochs."
        )


def prepare_eval(t: Trainer, loaders: Any, stage: str) -> None:
    items = [] if loaders is None else list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]
    bad = [type(x).__name__ for x in items if not isinstance(x, DataLoader)]
    if bad:
        raise EmberConfigError(f"{stage}: dataloaders must be torch DataLoaders, got {bad}.")
    method = "validation_step" if stage == "fit" else _STEP_METHOD[stage]
    if len(items) > 1 and t._module is not None and not _accepts_dataloader_idx(getattr(t._module, method)):
        raise EmberConfigError(
            f"{stage}: {len(items)} dataloaders, but {type(t._module).__name__}.{method} does not take "
            f"`dataloader_idx`; define {method}(self, batch, batch_idx, dataloader_idx=0)."
        )
    limit = t.limits[_LIMIT_KEY[stage]]
    t._eval_loaders = [t.accelerator.prepare_data_loader(seed_workers(dl), track_state=False) for dl in items]
    t._num_eval_batches = [apply_limit(limit, _length(dl)) for dl in t._eval_loaders]


def _accepts_dataloader_idx(method: Any) -> bool:
    params = inspect.signature(method).parameters.values()
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name == "dataloader_idx" for p in params):
        return True
    return len([p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]) >= 3


def configure_model(t: Trainer, module: Module) -> Module:
    """Lightning's ``configure_model`` hook, inside the strategy's init context (``meta`` where it shards), then
    SyncBatchNorm if asked."""
    if overrides(module, Module, "configure_model"):
        with t.accelerator.init_module(empty_init=True):
            t._hooks.module("configure_model", force=True)
    if t.sync_batchnorm and t.world_size > 1:
        module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)  # type: ignore[no-untyped-call,assignment]
    return module


def setup_model(t: Trainer, module: Module) -> None:
    """Prepare the model for evaluation or prediction (once; fit prepares it with its optimizers)."""
    if t._wrapped is not None and t.accelerator.unwrap_model(t._wrapped) is module:
        return
    t._wrapped = t.accelerator.prepare(configure_model(t, module))


def setup_fit(t: Trainer, module: Module, train_loader: DataLoader[Any]) -> None:
    """The training loader first (its length sizes ``estimated_stepping_batches``), then ``configure_optimizers``,
    then one ``prepare(model, *optimizers)``: the strategy sets the model up together with its optimizers."""
    module = configure_model(t, module)
    t._train_loader = t.accelerator.prepare_data_loader(train_loader)
    _count_train_batches(t)
    optimizers, configs = parse_optimizers(t._hooks.module("configure_optimizers", force=True))
    if module.automatic_optimization and len(optimizers) > 1:
        raise EmberConfigError(
            f"configure_optimizers returned {len(optimizers)} optimizers; automatic optimisation steps one. Set "
            "self.automatic_optimization = False and step them in training_step (self.optimizers())."
        )
    prepared = t.accelerator.prepare(module, *optimizers)
    t._wrapped, t._optimizers = (prepared[0], list(prepared[1:])) if optimizers else (prepared, [])
    for config in configs:
        config.scheduler = t.accelerator.prepare_scheduler(config.scheduler)
    t._scheduler_configs = configs
    t._manual_optimizers = [] if module.automatic_optimization else [ModuleOptimizer(t, o) for o in t._optimizers]


def log_hyperparams(t: Trainer, module: Module) -> None:
    if not t.is_global_zero or not t.loggers:
        return
    params = dict(module.hparams) if module.__dict__.get("_log_hyperparams", True) else {}
    params.update(getattr(t._datamodule, "hparams", None) or {})
    for logger in t.loggers:
        if params:
            logger.log_hyperparams(params)
        logger.save()
