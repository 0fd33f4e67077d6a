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


def _names(prefix: str, items: list[Any]) -> list[str]:
    return [prefix if i == 0 else f"{prefix}_{i}" for i in range(len(items))]


def _notice(text: str | None) -> None:
    if text:
        print(text, flush=True)


def _check_target(final: Path) -> None:
    if final.exists() and (not final.is_dir() or (any(final.iterdir()) and not (final / "manifest.json").exists())):
        raise EmberConfigError(
            f"save_state(output_dir={str(final)!r}): that path exists and is not an ember checkpoint; ember will "
            "not replace it. Choose a new or empty directory (or call save_state() with no path to write "
            "<project_dir>/checkpoints/step-XXXXXXXX)."
        )


def save_state(
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
    model_states = [acc.strategy.model_state_dict(m) for m in acc._models]  # collective for sharded strategies
    optim_states = [acc.strategy.optimizer_state_dict(o.optimizer) for o in acc._optimizers]
    try:
        if acc.is_main_process:
            _write_replicated(acc, tmp, model_states, optim_states, trainer_state)
        ckpt.save_state(tmp, f"state-rank{acc.process_index}", _rank_state(acc, extra))
    except Exception as exc:  # anything: the other ranks must hear about it
        error = exc
    del model_states, optim_states
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


def _write_replicated(
    acc: Accelerator, tmp: Path, model_states: list[dict[str, torch.Tensor]], optim_states: list[dict[str, Any]],
    trainer_state: dict[str, Any] | None,
) -> None:
    for name, state in zip(_names("model", acc._models), model_states):
        ckpt.write_tensors(tmp, f"{name}.safetensors", dict(state))
    for name, state in zip(_names("optimizer", acc._optimizers), optim_states):
        ckpt.save_state(tmp, name, state)
    for name, sched in zip(_names("scheduler", acc._schedulers), acc._schedulers):
        ckpt.save_state(tmp, name, sched.state_dict())
    ckpt.save_state(tmp, "precision", acc.precision.state_dict())
    for i, obj in enumerate(acc._custom_objects):
        ckpt.save_state(tmp, f"custom_{i}", obj.state_dict())
    if trainer_state is not None:
        ckpt.save_state(tmp, "trainer", trainer_state)
    if acc.trackers.loggers:
        ckpt.save_state(tmp, "trackers", acc.trackers.state_dict())


def _rank_state(acc: Accelerator, extra: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "rng": rng_state(acc.device),
        "loaders": [loader.state_dict() for loader in acc._dataloaders],
        "loader_shapes": [_loader_shape(loader, acc.num_processes) for loader in acc._dataloaders],
        "sampler_seed": acc._data._sampler_seed,
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
        "epoch": acc._dataloaders[0].state.epoch if acc._dataloaders else None,
        "world_size": acc.num_processes,
        "strategy": acc.strategy.name,
        "precision": acc.precision.name,
        "models": len(acc._models),
        "optimizers": len(acc._optimizers),
        "schedulers": len(acc._schedulers),
        "custom_objects": len(acc._custom_objects),
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


def load_state(acc: Accelerator, input_dir: Path | None, *, check_hashes: bool = True) -> Path | None:
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
    have: dict[str, list[Any]] = {"models": acc._models, "optimizers": acc._optimizers, "schedulers": acc._schedulers,
            "custom_objects": acc._custom_objects}
    for kind, objects in have.items():
        saved = int(manifest.get(kind, len(objects)))
        if saved != len(objects):
            what = "registered with register_for_checkpointing()" if kind == "custom_objects" else "prepared"
            raise ckpt.CheckpointError(
                f"{path} holds {saved} {kind} but {len(objects)} were {what}. Prepare (and register) the same "
                "objects as the run that saved it before calling load_state()."
            )


def _load_replicated(acc: Accelerator, path: Path) -> None:
    for name, model in zip(_names("model", acc._models), acc._models):
        acc.strategy.load_model_state_dict(model, ckpt.read_tensors(path, f"{name}.safetensors"))
    for name, opt in zip(_names("optimizer", acc._optimizers), acc._optimizers):
        acc.strategy.load_optimizer_state_dict(opt.optimizer, ckpt.load_state(path, name))
    for name, sched in zip(_names("scheduler", acc._schedulers), acc._schedulers):
        sched.load_state_dict(ckpt.load_state(path, name))
    acc.precision.load_state_dict(ckpt.load_state(path, "precision"))
    for i, obj in enumerate(acc._custom_objects):
        obj.load_state_dict(ckpt.load_state(path, f"custom_{i}"))
    if acc.is_main_process and (path / "trackers.json").is_file():
        acc.trackers.load_state_dict(ckpt.load_state(path, "trackers"))


def _restore_rank_state(acc: Accelerator, state: dict[str, Any], saved_world: int) -> None:
    acc.gradient_state.optimizer_steps = int(state["optimizer_steps"])
    acc.gradient_state.skipped_steps = int(state.get("skipped_steps", 0))
    if state.get("sampler_seed") is not None:
        acc._data._sampler_seed = int(state["sampler_seed"])
        for loader in acc._dataloaders:
            if loader.sampler is not None:
                loader.sampler.seed = int(state["sampler_seed"])
    for loader, saved in zip(acc._dataloaders, state["loaders"]):
        loader.load_state_dict(saved)
    set_rng_state(state["rng"], acc.device)
    if saved_world != acc.num_processes and acc.is_main_process:
        print(
            f"[ember] resumed a {saved_world}-process checkpoint on {acc.num_processes} processes: model, optimizer "
            f"and scheduler reloaded, data position remapped, rank r took the RNG streams of rank r % {saved_world}."
        )


def _remap_loaders(acc: Accelerator, state: dict[str, Any], saved_world: int) -> list[dict[str, Any]]:
    """The loader positions for this world size and batch size, or a CheckpointError saying what differs."""
    loaders = state["loaders"]
    if len(loaders) != len(acc._dataloaders):
        raise ckpt.CheckpointError(
            f"the checkpoint tracks {len(loaders)} dataloaders but {len(acc._dataloaders)} were prepared. Prepare "
            "the same dataloaders as the run that saved it."
        )
    shapes = state.get("loader_shapes") or [None] * len(loaders)
    out = []
    for i, (loader, saved, shape) in enumerate(zip(acc._dataloaders, loaders, shapes)):
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


def save_model(acc: Accelerator, model: torch.nn.Module, directory: Path) -> Path:
    state = acc.strategy.model_state_dict(model)
    path = directory / "model.safetensors"
    if acc.is_main_process:
        directory.mkdir(parents=True, exist_ok=True)
        from safetensors.torch import save_model as st_save_model

        st_save_model(acc.unwrap_model(model), str(path))
        del state
    acc.wait_for_everyone()
    return path
