"""save_state / load_state for the Accelerator, on top of the checkpoint engine (:mod:`ember.checkpoint`).

Every rank takes part: rank 0 creates the temporary directory and writes the replicated state (models,
optimizers, schedulers, scaler, registered objects); every rank writes its own ``state-rank{r}`` (RNG streams,
data position, counters); rank 0 then commits the directory atomically and applies retention (only after the
commit). Every rank agrees after each phase, so a failure on one rank (a full disk, say) raises on all of them
instead of leaving the others waiting; nothing is committed and the previous checkpoints stay as they were.

Loading: rank 0 picks the checkpoint (the newest complete one when no path is given) and verifies every file's
size and sha256 against the manifest; all ranks then load that one. A different world size or per-rank batch
size on resume reloads the replicated state and remaps the data position when the items consumed so far are a
whole number of the new rounds; otherwise the error says what differs.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ember import checkpoint as ckpt
from ember import faults
from ember._collectives import gather_objects
from ember._errors import EmberConfigError
from ember._log import info
from ember.strategies.base import Reshardable

if TYPE_CHECKING:
    from ember.accelerator import Accelerator
    from ember.data import DeviceLoader


def checkpoint_root(acc: Accelerator) -> Path:
    return acc.project_dir / "checkpoints"


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """Python, NumPy and torch CPU RNG states, plus the CUDA one of ``device`` (only that GPU's: reading every
    GPU's state would create a CUDA context on each of them from every rank)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device is not None and device.type == "cuda":
        cuda = state["cuda"]
        torch.cuda.set_rng_state(cuda[device.index or 0] if isinstance(cuda, list) else cuda, device)


def _notice(text: str | None) -> None:
    if text:
        info(text.removeprefix("[ember] "))


def _check_target(final: Path) -> None:
    if final.exists() and (not final.is_dir() or (any(final.iterdir()) and not (final / "manifest.json").exists())):
        raise EmberConfigError(
            f"save_state(output_dir={str(final)!r}): that path exists and is not an ember checkpoint; ember will "
            "not replace it. Choose a new or empty directory (or call save_state() with no path to write "
            "<project_dir>/checkpoints/step-XXXXXXXX)."
        )


def _save_state(
    acc: Accelerator, output_dir: Path | None, *, keep_last: int | None = None, extra: dict[str, Any] | None = None,
    trainer_state: dict[str, Any] | None = None,
) -> Path:
    """Every rank calls this. A failure on any rank (full disk, bad object) raises on every rank, never hangs."""
    auto = output_dir is None
    final = checkpoint_root(acc) / ckpt.step_dir_name(acc.step) if output_dir is None else output_dir
    if not acc.sync_gradients:
        warnings.warn(
            "save_state() inside a gradient-accumulation window: the gradients accumulated so far are not saved, "
            "so a resume from this checkpoint is not exact. Save after optimizer.step() at a window boundary.",
            stacklevel=3,
        )
    tmp = final.parent / f".tmp-{final.name}"
    error: BaseException | None = None
    if acc.is_main_process:
        try:
            if auto:  # ember's own folder: an uncommitted leftover of a crashed save is moved aside, kept
                _notice(ckpt.move_aside_damaged(final))
            _check_target(final)
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = ckpt.begin(final)
        except (OSError, ckpt.CheckpointError, EmberConfigError) as exc:
            error = exc
    _agree(acc, error, f"save_state(): creating {tmp}")
    try:  # the strategy writes models and optimizers (full on rank 0, or a shard per rank); a collective
        acc.strategy.save_checkpoint(tmp, acc.prepared.named_models(), acc.prepared.named_optimizers())
        if acc.is_main_process:
            _write_replicated(acc, tmp, trainer_state)
        ckpt.save_state(tmp, f"state-rank{acc.process_index}", _rank_state(acc, extra))
    except Exception as exc:  # anything: the other ranks must hear about it
        error = exc
    _agree(acc, error, f"save_state(): writing {tmp}", cleanup=tmp)
    if acc.is_main_process:
        try:
            ckpt.commit(tmp, final, _meta(acc, extra), update_latest=auto)
            if auto and keep_last is not None:
                ckpt.apply_retention(final.parent, keep_last, protect=[final])
        except Exception as exc:
            error = exc
    _agree(acc, error, f"save_state(): committing {final}")
    return final


def _write_replicated(acc: Accelerator, tmp: Path, trainer_state: dict[str, Any] | None) -> None:
    prepared = acc.prepared
    for name, sched in zip(prepared.names("scheduler", prepared.schedulers), prepared.schedulers):
        ckpt.save_state(tmp, name, sched.state_dict())
    ckpt.save_state(tmp, "precision", acc.precision.state_dict())
    for i, obj in enumerate(prepared.custom_objects):
        ckpt.save_state(tmp, f"custom_{i}", obj.state_dict())
    if trainer_state is not None:
        ckpt.save_state(tmp, "trainer", trainer_state)
    if acc.trackers.loggers:
        ckpt.save_state(tmp, "trackers", acc.trackers.state_dict())


def _rank_state(acc: Accelerator, extra: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "rng": rng_state(acc.device),
        "loaders": [loader.state_dict() for loader in acc.prepared.dataloaders],
        "loader_shapes": [_loader_shape(loader, acc.num_processes) for loader in acc.prepared.dataloaders],
        "sampler_seed": acc.data_preparer.saved_seed(),
        "optimizer_steps": acc.gradient_state.optimizer_steps,
        "skipped_steps": acc.gradient_state.skipped_steps,
        "extra": extra or {},
    }


def _loader_shape(loader: DeviceLoader, world: int) -> dict[str, Any]:
    """What the data position means: per-rank batch size, dataset length and world size."""
    length = loader.sampler.length if loader.sampler is not None else None
    return {"batch_size": loader.batch_size or 1, "length": length, "world_size": world}


def _meta(acc: Accelerator, extra: dict[str, Any] | None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "step": acc.step,
        "epoch": acc.prepared.dataloaders[0].state.epoch if acc.prepared.dataloaders else None,
        "world_size": acc.num_processes,
        "strategy": acc.strategy.name,
        "precision": acc.precision.name,
        **acc.prepared.counts(),
    }
    meta.update(
        {
            k: v
            for k, v in (extra or {}).items()
            if isinstance(v, (int, str, bool)) or (isinstance(v, float) and math.isfinite(v))
            if k not in meta
        }
    )
    return meta


def _agree(acc: Accelerator, error: BaseException | None, what: str, cleanup: Path | None = None) -> None:
    """A barrier that also tells every rank whether any rank failed; if so, every rank raises."""
    failed = [acc.process_index] if error is not None else []
    if acc.strategy.is_distributed:
        flag = torch.tensor([1 if error is not None else 0], dtype=torch.int32, device=acc.device)
        with faults.named_collective(acc.strategy, what, lambda: acc.step):
            flags = acc.strategy.all_gather(flag).tolist()
        failed = [rank for rank, bad in enumerate(flags) if bad]
    if not failed:
        return
    report = ckpt.failure_report(error)  # every rank learns every failing rank's cause, and raises the real one
    reports = gather_objects(acc.strategy, [report]) if acc.strategy.is_distributed else [report]
    if cleanup is not None and acc.is_main_process:
        shutil.rmtree(cleanup, ignore_errors=True)
    raise ckpt.collective_error(what, error, reports)


def _load_state(acc: Accelerator, input_dir: Path | None, *, check_hashes: bool = True) -> Path | None:
    """Rank 0 picks (newest complete when ``input_dir`` is None) and verifies; every rank loads the same one."""
    chosen, problem = None, None
    if acc.is_main_process:
        try:
            chosen = input_dir if input_dir is not None else ckpt.find_latest(checkpoint_root(acc))
            if input_dir is None:  # say which newer checkpoints were skipped, and why
                _notice(ckpt.describe_fallback([checkpoint_root(acc)], chosen))
            if chosen is not None:
                ckpt.verify(chosen, check_hashes=check_hashes)
        except ckpt.CheckpointError as exc:
            problem = str(exc)
    if acc.strategy.is_distributed:
        with faults.named_collective(acc.strategy, "load_state()", lambda: acc.step):
            box = acc.strategy.broadcast_object((None if chosen is None else str(chosen), problem), 0)
        chosen, problem = (None if box[0] is None else Path(box[0])), box[1]
    if problem is not None:
        raise ckpt.CheckpointError(problem)
    if chosen is None:
        return None
    rank_state: dict[str, Any] = {}
    saved_world = acc.num_processes
    error: BaseException | None = None
    try:  # everything that can refuse this checkpoint, before anything is modified
        manifest = ckpt.verify(chosen, check_hashes=False)
        _check_counts(acc, chosen, manifest)
        saved_world = int(manifest.get("world_size", acc.num_processes))
        rank_state = ckpt.load_state(chosen, f"state-rank{acc.process_index % saved_world}")
        rank_state["loaders"] = _remap_loaders(acc, rank_state, saved_world)
    except Exception as exc:
        error = exc
    _agree(acc, error, f"load_state({str(chosen)!r}): checking")
    try:
        _load_replicated(acc, chosen)
        _restore_rank_state(acc, rank_state, saved_world)
    except Exception as exc:
        error = exc
    _agree(acc, error, f"load_state({str(chosen)!r}): loading")
    return chosen


def _check_counts(acc: Accelerator, path: Path, manifest: dict[str, Any]) -> None:
    for kind, count in acc.prepared.counts().items():
        saved = int(manifest.get(kind, count))
        if saved != count:
            what = "registered with register_for_checkpointing()" if kind == "custom_objects" else "prepared"
            raise ckpt.CheckpointError(
                f"{path} holds {saved} {kind} but {count} were {what}. Prepare (and register) the same "
                "objects as the run that saved it before calling load_state()."
            )
    saved_world = int(manifest.get("world_size", acc.num_processes))
    if saved_world != acc.num_processes and not isinstance(acc.strategy, Reshardable):
        raise ckpt.CheckpointError(
            f"{path} was saved by {saved_world} processes with strategy={manifest.get('strategy')!r}; this job has "
            f"{acc.num_processes}, and strategy={acc.strategy.name!r} cannot reshard its state. Resume with "
            f"{saved_world} processes, or export the weights (accelerator.save_model) and start a new run from them."
        )


def _load_replicated(acc: Accelerator, path: Path) -> None:
    prepared = acc.prepared
    acc.strategy.load_checkpoint(path, prepared.named_models(), prepared.named_optimizers())
    for name, sched in zip(prepared.names("scheduler", prepared.schedulers), prepared.schedulers):
        sched.load_state_dict(ckpt.load_state(path, name))
    acc.precision.load_state_dict(ckpt.load_state(path, "precision"))
    for i, obj in enumerate(prepared.custom_objects):
        obj.load_state_dict(ckpt.load_state(path, f"custom_{i}"))
    if acc.is_main_process and (path / "trackers.json").is_file():
        acc.trackers.load_state_dict(ckpt.load_state(path, "trackers"))


def _restore_rank_state(acc: Accelerator, state: dict[str, Any], saved_world: int) -> None:
    acc.gradient_state.optimizer_steps = int(state["optimizer_steps"])
    acc.gradient_state.skipped_steps = int(state.get("skipped_steps", 0))
    if state.get("sampler_seed") is not None:
        acc.data_preparer.restore_seed(int(state["sampler_seed"]), acc.prepared.dataloaders)
    for loader, saved in zip(acc.prepared.dataloaders, state["loaders"]):
        loader.load_state_dict(saved)
    set_rng_state(state["rng"], acc.device)
    if saved_world != acc.num_processes and acc.is_main_process:
        info(
            f"resumed a {saved_world}-process checkpoint on {acc.num_processes} processes: model, optimizer "
            f"and scheduler reloaded, data position remapped, rank r took the RNG streams of rank r % {saved_world}."
        )


def _remap_loaders(acc: Accelerator, state: dict[str, Any], saved_world: int) -> list[dict[str, Any]]:
    """The loader positions for this world size and batch size, or a CheckpointError saying what differs."""
    loaders = state["loaders"]
    prepared = acc.prepared.dataloaders
    if len(loaders) != len(prepared):
        raise ckpt.CheckpointError(
            f"the checkpoint tracks {len(loaders)} dataloaders but {len(prepared)} were prepared. Prepare "
            "the same dataloaders as the run that saved it."
        )
    shapes = state.get("loader_shapes") or [None] * len(loaders)
    out = []
    for i, (loader, saved, shape) in enumerate(zip(prepared, loaders, shapes)):
        saved = dict(saved)
        old_bs = int(shape["batch_size"]) if shape else (loader.batch_size or 1)
        new_bs = loader.batch_size or 1
        length = loader.sampler.length if loader.sampler is not None else None
        if shape and shape.get("length") is not None and length is not None and shape["length"] != length:
            raise ckpt.CheckpointError(
                f"dataloader {i}: the checkpoint was taken on a dataset of {shape['length']} items, this one has "
                f"{length}: the saved data position means nothing here. Resume with the same dataset."
            )
        if saved["batches_consumed"] and (saved_world, old_bs) != (acc.num_processes, new_bs):
            saved["batches_consumed"] = _remap_position(
                int(saved["batches_consumed"]), saved_world * old_bs, acc.num_processes * new_bs, i
            )
        out.append(saved)
    return out


def _remap_position(batches: int, old_round: int, new_round: int, index: int = 0) -> int:
    """Batches per rank under the new layout, for ``batches`` per rank consumed in rounds of ``old_round`` items."""
    consumed = batches * old_round
    if consumed % new_round:
        raise ckpt.CheckpointError(
            f"cannot resume dataloader {index} mid-epoch: {consumed} items of this epoch were consumed in rounds of "
            f"{old_round} (world size x batch size when saved), which is not a whole number of rounds of "
            f"{new_round} now. Resume with the saved world size and batch size, or from a checkpoint taken at an "
            "epoch boundary."
        )
    return consumed // new_round


def _save_model(acc: Accelerator, model: torch.nn.Module, directory: Path, safe_serialization: bool = True) -> Path:
    """Write the model's full state dict (gathered by the strategy) as ``model.safetensors`` on the main process."""
    if not safe_serialization:
        raise EmberConfigError(
            "save_model(safe_serialization=False) would write a pickle; ember writes safetensors only. Remove the "
            "argument (plain torch.load_state_dict reads the file with safetensors.torch.load_file)."
        )
    state = acc.strategy.model_state_dict(model)  # a collective for sharded strategies: every rank calls it
    path = directory / "model.safetensors"
    if acc.is_main_process:
        directory.mkdir(parents=True, exist_ok=True)
        from safetensors.torch import save_file

        save_file(_plain_tensors(state), str(path), metadata={"format": "pt"})
        config = getattr(acc.unwrap_model(model), "config", None)
        if config is not None and callable(getattr(config, "to_json_file", None)):  # a transformers model: from_pretrained(directory) works
            config.to_json_file(str(directory / "config.json"))
    del state
    acc.wait_for_everyone()
    return path


def _plain_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors, one storage each: a tensor shared by several names (tied weights) is written under
    every name, so plain ``load_state_dict`` (strict) and ``from_pretrained`` both load the file."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, Any]] = set()
    for name, tensor in state.items():
        tensor = tensor.detach().to("cpu").contiguous()
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        out[name] = tensor.clone() if key in seen else tensor
        seen.add(key)
    return out


# ------------------------------------------------------------------------------------------------------
# Accelerator verbs (assigned as methods in ember.accelerator)
# ------------------------------------------------------------------------------------------------------
def get_state_dict(self: Accelerator, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's full state dict, without wrapper prefixes (gathered when the strategy shards it: call it
    on every process).

    >>> from ember import Accelerator
    >>> accelerator = Accelerator(cpu=True, verbose=False)
    >>> model = accelerator.prepare(torch.nn.Linear(2, 1))
    >>> list(accelerator.get_state_dict(model))
    ['weight', 'bias']
    """
    return self.strategy.model_state_dict(model)


def save_model(
    self: Accelerator, model: torch.nn.Module, save_directory: str | os.PathLike[str], safe_serialization: bool = True
) -> Path:
    """Write the model's full weights as ``model.safetensors`` into ``save_directory`` (gathered from every
    process by the strategy; call it on every process). Plain ``load_state_dict`` reads it back.

    >>> from ember import Accelerator
    >>> import os, tempfile
    >>> accelerator = Accelerator(cpu=True, verbose=False)
    >>> model = accelerator.prepare(torch.nn.Linear(2, 1))
    >>> path = accelerator.save_model(model, os.path.join(tempfile.mkdtemp(), "export"))
    >>> path.name, sorted(os.listdir(path.parent))
    ('model.safetensors', ['model.safetensors'])
    """
    return _save_model(self, model, Path(save_directory), safe_serialization)


def register_for_checkpointing(self: Accelerator, *objects: Any) -> None:
    """Save and restore these objects (anything with ``state_dict``/``load_state_dict``) with the state.

    >>> from ember import Accelerator
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
    self.prepared.custom_objects.extend(objects)


def save_state(self: Accelerator, output_dir: str | os.PathLike[str] | None = None, **kwargs: Any) -> Path:
    """Save model(s), optimizer(s), scheduler(s), scaler, RNG, data position and registered objects.

    With no ``output_dir`` it writes ``<project_dir>/checkpoints/step-XXXXXXXX``, updates ``latest`` and, with
    ``keep_last=N``, then deletes all but the newest N. The directory appears atomically; a failure on any
    rank raises on every rank and commits nothing. Call it on every rank, after ``optimizer.step()``.

    >>> from ember import Accelerator
    >>> import os, tempfile
    >>> accelerator = Accelerator(cpu=True, verbose=False, project_dir=tempfile.mkdtemp())
    >>> model = torch.nn.Linear(2, 1)
    >>> model, optimizer = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    >>> path = accelerator.save_state(keep_last=2)
    >>> path.name, sorted(os.listdir(path))  # doctest: +NORMALIZE_WHITESPACE
    ('step-00000000', ['README.md', 'manifest.json', 'model.safetensors', 'optimizer.json', 'precision.json',
                       'state-rank0.json', 'state-rank0.safetensors'])
    """
    if output_dir is None and self.project_configuration.total_limit is not None:
        kwargs.setdefault("keep_last", self.project_configuration.total_limit)  # ProjectConfiguration(total_limit=)
    path = _save_state(self, None if output_dir is None else Path(output_dir), **kwargs)
    self.project_configuration.iteration += 1
    return path


def load_state(self: Accelerator, input_dir: str | os.PathLike[str] | None = None, **kwargs: Any) -> Path | None:
    """Restore what :meth:`save_state` wrote. With no path: the newest complete checkpoint under
    ``<project_dir>/checkpoints`` (returns None if there is none yet). Every file is checked against the
    manifest's sha256 (``check_hashes=False``: sizes only); nothing is ever unpickled.

    >>> from ember import Accelerator
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
    return _load_state(self, None if input_dir is None else Path(input_dir), **kwargs)


def save(self: Accelerator, obj: Any, f: str | os.PathLike[str], safe_serialization: bool = False) -> None:
    """Write ``obj`` to ``f`` on the main process (``save_pretrained(..., save_function=accelerator.save)`` works).

    A dict of tensors (a state dict) is written in the safetensors format; anything else (plain data, tensors
    inside) as ember's JSON + safetensors pair (``f`` and ``f`` + ``.safetensors``). Nothing is pickled, so
    ``torch.load`` cannot read the result: read a state dict with ``safetensors.torch.load_file(f)``.

    >>> import os, tempfile
    >>> from ember import Accelerator
    >>> from safetensors.torch import load_file
    >>> path = os.path.join(tempfile.mkdtemp(), "weights.safetensors")
    >>> Accelerator(cpu=True).save({"w": torch.ones(2)}, path)
    >>> load_file(path)["w"]
    tensor([1., 1.])
    """
    if not self.is_main_process:
        return
    target = Path(f)
    target.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(obj, dict) and obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        from safetensors.torch import save_file

        save_file(_plain_tensors(obj), str(target), metadata={"format": "pt"})
        return
    from ember.checkpoint import flatten_state

    skeleton, tensors = flatten_state(obj, root=target.name)
    if tensors:
        from safetensors.torch import save_file

        save_file(_plain_tensors(tensors), str(target) + ".safetensors")
    import json

    target.write_text(json.dumps({"ember_object": 1, "tensors": target.name + ".safetensors" if tensors else None,
                                  "skeleton": skeleton}))
