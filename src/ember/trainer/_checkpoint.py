"""Trainer checkpoints: the Accelerator's ``save_state``/``load_state`` plus the trainer state.

The trainer state (written by the Accelerator as ``trainer.json`` + ``trainer.safetensors``)::

    {"loop": {"epoch", "batch_idx", "batches_that_stepped", "total_batches", "epoch_finished"},
     "callbacks": {callback.state_key: callback.state_dict()},
     "loggers": [logger.state_dict(), ...],
     "hparams": {...},               # module.hparams, as plain data
     ...                             # whatever callbacks' / the module's on_save_checkpoint add}

Resume is exact: model, optimizers, schedulers, precision scaler, RNG streams and the training loader's
position come back through the Accelerator; the loop continues at the saved batch of the saved epoch.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ember import checkpoint as ckpt
from ember._errors import EmberConfigError
from ember._log import info as _log_info

if TYPE_CHECKING:
    from ember.trainer.trainer import Trainer


def plain(value: Any) -> Any:
    """JSON-able copy of ``value`` (anything else becomes its ``str``)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def _is_data(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str, os.PathLike)):
        return True
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _is_data(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_is_data(v) for v in value)
    return False


def not_data(hparams: Mapping[str, Any]) -> list[str]:
    """Hyperparameters that :func:`plain` can only store as their ``str`` (modules, callables, other objects)."""
    return sorted(k for k, v in hparams.items() if not _is_data(v))


def trainer_state(t: Trainer) -> dict[str, Any]:
    loop = t._loop.state_dict()
    finite = t.num_training_batches != math.inf
    loop["epoch_finished"] = bool(loop["epoch_finished"]) or (finite and t._loop.batch_idx >= t.num_training_batches)
    state: dict[str, Any] = {
        "loop": loop,
        "callbacks": {cb.state_key: cb.state_dict() for cb in t.callbacks},
        "loggers": [logger.state_dict() for logger in t.loggers],
        "hparams": plain(dict(t._module.hparams)) if t._module is not None else {},
        "hparams_not_data": not_data(dict(t._module.hparams)) if t._module is not None else [],
    }
    saver = getattr(t._datamodule, "state_dict", None)
    datamodule_state = saver() if callable(saver) else None
    if datamodule_state:
        state["datamodule"] = datamodule_state
    t._hooks.callbacks("on_save_checkpoint", state)
    t._hooks.module("on_save_checkpoint", state)
    return state


_TORCH_FILE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".tar")


def managed_dirs(t: Trainer) -> list[Path]:
    """ember's own checkpoint folders for this Trainer: the ModelCheckpoint dirs and ``<root>/checkpoints``."""
    dirs = [Path(cb.dirpath) for cb in t.checkpoint_callbacks if getattr(cb, "dirpath", None)]
    return [*dirs, Path(t.default_root_dir) / "checkpoints"]


def is_managed(t: Trainer, path: Path) -> bool:
    parent = path.parent.resolve()
    return any(parent == d.resolve() for d in managed_dirs(t))


def save(t: Trainer, path: Path) -> Path:
    """Commit ``path`` atomically (every rank takes part), tell the loggers. In ember's own checkpoint folders
    (ModelCheckpoint's, ``<root>/checkpoints``) an uncommitted leftover at ``path`` is first moved aside and
    ``latest`` then points at the new checkpoint; a path of the user's own gets neither."""
    from ember.checkpoint._store import write_latest

    acc = t.accelerator
    managed = is_managed(t, path)
    if managed and acc.is_main_process:
        try:
            notice = ckpt.move_aside_damaged(path)
        except OSError:
            notice = None  # save_state's own check then refuses the path, on every rank
        if notice:
            print(notice, flush=True)
    # saved while a training batch runs (an exception in training_step, a save from inside it): the loader has
    # handed that batch out but the loop has not counted it; record the position before it, so the two agree
    # and a resume trains that batch
    loader, loop = t._train_loader, t._loop
    in_batch = (loader is not None and loader.state.epoch == loop.epoch
                and loader.state.batches_consumed == loop.batch_idx + 1)
    if in_batch and loader is not None:
        loader.state.batches_consumed -= 1
    try:
        out = acc.save_state(
            path, trainer_state=trainer_state(t),
            extra={"global_step": t.global_step, "trainer_epoch": t.current_epoch},
        )
    finally:
        if in_batch and loader is not None:
            loader.state.batches_consumed += 1
    if acc.is_main_process:
        if managed:
            write_latest(out.parent, out.name)
        elif out.suffix in _TORCH_FILE_SUFFIXES and out.name not in t._told_about:
            t._told_about.add(out.name)
            _log_info(f"{out} is a checkpoint directory, not a torch.save file (torch.load cannot open it): load "
                  f"it with YourModule.load_from_checkpoint({str(out)!r}) or fit(..., ckpt_path={str(out)!r}); "
                  "its README.md says more.")
        for logger in t.loggers:
            logger.after_save_checkpoint(str(out))
    return out


def checkpoint_dirs(t: Trainer) -> list[Path]:
    """Where this run's checkpoints may be: the callbacks' dirs, ``<root>/checkpoints`` and the checkpoint
    dirs of every logger version under ``<root>`` (a restarted run gets a new logger version, but
    ``ckpt_path="last"`` must still find the previous run's checkpoints)."""
    root = Path(t.default_root_dir)
    dirs = [Path(cb.dirpath) for cb in t.checkpoint_callbacks if getattr(cb, "dirpath", None)]
    dirs += [root / "checkpoints", *sorted(root.glob("*/version_*/checkpoints")), *sorted(root.glob("*/checkpoints"))]
    unique: list[Path] = []
    for d in dirs:
        if d not in unique and d.is_dir():
            unique.append(d)
    return unique or [root / "checkpoints"]


def searched(t: Trainer) -> str:
    """The folders ``ckpt_path="last"`` looks in, as the user would name them (existing or not)."""
    root = Path(t.default_root_dir)
    places = [str(d) for d in managed_dirs(t)]
    places.append(str(root / "*" / "version_*" / "checkpoints") + " (earlier logger versions)")
    return ", ".join(dict.fromkeys(places))


def _newest(paths: list[Path]) -> Path | None:
    def key(p: Path) -> tuple[int, float]:
        try:
            step = int(ckpt.read_json(p, "manifest.json").get("step", -1))
        except ckpt.CheckpointError:
            step = -1
        return (step, p.stat().st_mtime)

    return max(paths, key=key) if paths else None


def resolve(t: Trainer, ckpt_path: str | os.PathLike[str] | None) -> Path | None:
    """``"last"``: the newest complete checkpoint in the checkpoint dirs; ``"best"``: the checkpoint
    callback's best; else the path itself. Rank 0 decides; every rank gets the same answer."""
    if ckpt_path is None:
        return None
    found: Path | None
    if ckpt_path == "last":
        dirs = checkpoint_dirs(t)
        found = _newest([p for p in (ckpt.find_latest(d) for d in dirs) if p is not None])
        if t.is_global_zero:
            notice = ckpt.describe_fallback([d for d in dirs if d.is_dir()], found, "fit(ckpt_path='last')")
            if notice:
                print(notice, flush=True)
        if found is None:
            warnings.warn(f"fit(ckpt_path='last'): no checkpoint to resume from in {searched(t)}; starting from scratch.",
                          stacklevel=3)
    elif ckpt_path == "best":
        callback = t.checkpoint_callback
        best = getattr(callback, "best_model_path", "") if callback is not None else ""
        if not best:
            raise EmberConfigError("ckpt_path='best' but there is no best checkpoint yet: add ModelCheckpoint("
                                   "monitor=...) and fit first, or pass a checkpoint directory.")
        found = Path(best)
    else:
        found = Path(ckpt_path)
        if not found.is_dir():
            raise EmberConfigError(f"ckpt_path={os.fspath(ckpt_path)!r} is not a checkpoint directory. Pass a "
                                   "directory written by trainer.save_checkpoint/ModelCheckpoint, 'last' or 'best'.")
    text = t.accelerator.broadcast(None if found is None else str(found))
    return None if text is None else Path(text)


def preload_loggers(t: Trainer, ckpt_path: str | os.PathLike[str] | None) -> bool:
    """Give the loggers their saved run (version/id) before anything resolves ``log_dir``; only for an
    explicit checkpoint path ("last"/"best" are found through the checkpoint callbacks' directories)."""
    if ckpt_path == "last":
        ckpt_path = _newest([p for p in (ckpt.find_latest(d) for d in checkpoint_dirs(t)) if p is not None])
    if ckpt_path is None or ckpt_path == "best" or not Path(ckpt_path).is_dir():
        return False
    try:
        state = ckpt.load_state(Path(ckpt_path), "trainer")
    except ckpt.CheckpointError:
        return False
    _restore_loggers(t, state.get("loggers", []))
    return True


def restore(t: Trainer, ckpt_path: str | os.PathLike[str] | None, loggers: bool = True) -> None:
    """Restore everything for ``fit(ckpt_path=...)``; the loop continues where the checkpoint was taken."""
    path = resolve(t, ckpt_path)
    if path is None:
        return
    t.ckpt_path = str(path)
    t.accelerator.load_state(path)
    try:
        state = ckpt.load_state(path, "trainer")
    except ckpt.CheckpointError:
        warnings.warn(f"{path} holds no trainer state (written by Accelerator.save_state?): the model, "
                      "optimizers and data position are restored, the loop counters start at 0.", stacklevel=3)
        return
    _restore_loop(t, state.get("loop", {}))
    saved_callbacks = state.get("callbacks", {})
    for cb in t.callbacks:
        if cb.state_key in saved_callbacks:
            cb.load_state_dict(saved_callbacks[cb.state_key])
    if loggers:
        _restore_loggers(t, state.get("loggers", []))
    loader = getattr(t._datamodule, "load_state_dict", None)
    if "datamodule" in state and callable(loader):
        loader(state["datamodule"])
    t._hooks.callbacks("on_load_checkpoint", state)
    t._hooks.module("on_load_checkpoint", state)


def _restore_loop(t: Trainer, loop: Mapping[str, Any]) -> None:
    state = t._loop
    state.epoch = int(loop.get("epoch", 0))
    state.batches_that_stepped = int(loop.get("batches_that_stepped", 0))
    state.total_batches = int(loop.get("total_batches", 0))
    done, batch_idx = bool(loop.get("epoch_finished", False)), int(loop.get("batch_idx", 0))
    if done:
        state.epoch += 1
    state.resume_batches = batch_idx if not done and batch_idx > 0 else None


def _restore_loggers(t: Trainer, saved: list[Any]) -> None:
    kinds = [s.get("logger") if isinstance(s, Mapping) else None for s in saved]
    if kinds != [type(lg).__name__ for lg in t.loggers]:
        if saved:
            warnings.warn(f"the checkpoint's loggers {kinds} differ from this Trainer's; they start new runs.",
                          stacklevel=4)
        return
    for logger, state in zip(t.loggers, saved):
        logger.load_state_dict(state)


def load_weights(t: Trainer, ckpt_path: str | os.PathLike[str] | None) -> None:
    """Only the model weights (``validate``/``test``/``predict`` with ``ckpt_path``)."""
    path = resolve(t, ckpt_path)
    if path is None or t._wrapped is None:
        return
    ckpt.verify(path, check_hashes=False)
    t.accelerator.strategy.load_model_state_dict(t._wrapped, ckpt.read_model_weights(path))
