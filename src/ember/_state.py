"""save_state / load_state for the Accelerator, on top of the checkpoint engine (:mod:`ember.checkpoint`).

Every rank takes part: rank 0 creates the temporary directory and writes the replicated state (models,
optimizers, schedulers, scaler, registered objects); every rank writes its own ``state-rank{r}`` (RNG streams,
data position, counters); rank 0 then commits the directory atomically and applies retention.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ember import checkpoint as ckpt
from ember._errors import EmberConfigError

if TYPE_CHECKING:
    from ember.accelerator import Accelerator


def checkpoint_root(acc: Accelerator) -> Path:
    return acc.project_dir / "checkpoints"


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _names(prefix: str, items: list[Any]) -> list[str]:
    return [prefix if i == 0 else f"{prefix}_{i}" for i in range(len(items))]


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
    auto = output_dir is None
    final = checkpoint_root(acc) / ckpt.step_dir_name(acc.step) if output_dir is None else output_dir
    if acc.is_main_process:
        _check_target(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        ckpt.begin(final)
    acc.wait_for_everyone()
    tmp = final.parent / f".tmp-{final.name}"
    model_states = [acc.strategy.model_state_dict(m) for m in acc._models]  # collective for sharded strategies
    optim_states = [acc.strategy.optimizer_state_dict(o.optimizer) for o in acc._optimizers]
    if acc.is_main_process:
        for name, state in zip(_names("model", acc._models), model_states):
            ckpt.write_tensors(tmp, f"{name}.safetensors", {k: v for k, v in state.items()})
        for name, state in zip(_names("optimizer", acc._optimizers), optim_states):
            ckpt.save_state(tmp, name, state)
        for name, sched in zip(_names("scheduler", acc._schedulers), acc._schedulers):
            ckpt.save_state(tmp, name, sched.state_dict())
        ckpt.save_state(tmp, "precision", acc.precision.state_dict())
        for i, obj in enumerate(acc._custom_objects):
            ckpt.save_state(tmp, f"custom_{i}", obj.state_dict())
        if trainer_state is not None:
            ckpt.save_state(tmp, "trainer", trainer_state)
    rank_state = {
        "rng": rng_state(),
        "loaders": [loader.state_dict() for loader in acc._dataloaders],
        "sampler_seed": acc._data._sampler_seed,
        "optimizer_steps": acc.gradient_state.optimizer_steps,
        "extra": extra or {},
    }
    ckpt.save_state(tmp, f"state-rank{acc.process_index}", rank_state)
    acc.wait_for_everyone()
    if acc.is_main_process:
        meta = {
            "step": acc.step,
            "world_size": acc.num_processes,
            "strategy": acc.strategy.name,
            "precision": acc.precision.name,
            "models": len(acc._models),
            "optimizers": len(acc._optimizers),
            "schedulers": len(acc._schedulers),
            "custom_objects": len(acc._custom_objects),
        }
        meta.update({k: v for k, v in (extra or {}).items() if isinstance(v, (int, float, str, bool))})
        ckpt.commit(tmp, final, meta, update_latest=auto)
        if auto and keep_last is not None:
            ckpt.apply_retention(final.parent, keep_last, protect=[final])
    acc.wait_for_everyone()
    return final


def load_state(acc: Accelerator, input_dir: Path | None, *, check_hashes: bool = True) -> Path | None:
    if input_dir is None:
        found = ckpt.find_latest(checkpoint_root(acc))
        if found is None:
            return None
        input_dir = found
    manifest = ckpt.verify(input_dir, check_hashes=check_hashes)
    for kind, have in (("models", acc._models), ("optimizers", acc._optimizers), ("schedulers", acc._schedulers)):
        saved = int(manifest.get(kind, len(have)))
        if saved != len(have):
            raise ckpt.CheckpointError(
                f"{input_dir} holds {saved} {kind} but {len(have)} were prepared. Prepare the same objects "
                "as the run that saved it before calling load_state()."
            )
    for name, model in zip(_names("model", acc._models), acc._models):
        acc.strategy.load_model_state_dict(model, ckpt.read_tensors(input_dir, f"{name}.safetensors"))
    for name, opt in zip(_names("optimizer", acc._optimizers), acc._optimizers):
        acc.strategy.load_optimizer_state_dict(opt.optimizer, ckpt.load_state(input_dir, name))
    for name, sched in zip(_names("scheduler", acc._schedulers), acc._schedulers):
        sched.load_state_dict(ckpt.load_state(input_dir, name))
    acc.precision.load_state_dict(ckpt.load_state(input_dir, "precision"))
    for i, obj in enumerate(acc._custom_objects):
        obj.load_state_dict(ckpt.load_state(input_dir, f"custom_{i}"))
    saved_world = int(manifest.get("world_size", acc.num_processes))
    rank_state = ckpt.load_state(input_dir, f"state-rank{acc.process_index % saved_world}")
    _restore_rank_state(acc, rank_state, saved_world)
    acc.wait_for_everyone()
    return input_dir


def _restore_rank_state(acc: Accelerator, state: dict[str, Any], saved_world: int) -> None:
    acc.gradient_state.optimizer_steps = int(state["optimizer_steps"])
    if state.get("sampler_seed") is not None:
        acc._data._sampler_seed = int(state["sampler_seed"])
        for loader in acc._dataloaders:
            if loader.sampler is not None:
                loader.sampler.seed = int(state["sampler_seed"])
    loaders = state["loaders"]
    if len(loaders) != len(acc._dataloaders):
        raise ckpt.CheckpointError(
            f"the checkpoint tracks {len(loaders)} dataloaders but {len(acc._dataloaders)} were prepared."
        )
    for loader, saved in zip(acc._dataloaders, loaders):
        if saved_world != acc.num_processes and saved["batches_consumed"]:
            saved = dict(saved)
            saved["batches_consumed"] = _remap_position(saved["batches_consumed"], saved_world, acc.num_processes)
        loader.load_state_dict(saved)
    if saved_world == acc.num_processes:
        set_rng_state(state["rng"])


def _remap_position(batches: int, old_world: int, new_world: int) -> int:
    consumed_rounds = batches * old_world
    if consumed_rounds % new_world:
        raise ckpt.CheckpointError(
            f"cannot resume mid-epoch from world size {old_world} to {new_world}: {batches} batches per rank were "
            f"consumed ({consumed_rounds} in all), which does not split evenly over {new_world} ranks. Resume with "
            f"{old_world} processes, or from a checkpoint taken at an epoch boundary."
        )
    return consumed_rounds // new_world


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
