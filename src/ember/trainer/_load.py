"""``Module.load_from_checkpoint``: a module rebuilt from an ember checkpoint directory (no pickle).

The hyperparameters come from ``trainer.json`` (what ``save_hyperparameters`` recorded), overridden by the keyword
arguments; the weights from ``model.safetensors``, after the manifest's sizes and sha256 are checked. Hyperparameters
that were objects rather than data (a backbone module, a loss function) were stored as their text only: they must
be passed again, and the error says which.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import yaml

from ember import checkpoint as ckpt
from ember._errors import EmberConfigError

if TYPE_CHECKING:
    from ember.trainer.module import Module

M = TypeVar("M", bound="Module")

_HOW = ("ember checkpoints are directories written by trainer.save_checkpoint(...), ModelCheckpoint or "
        "Accelerator.save_state(...)")


def checkpoint_dir(path: str | os.PathLike[str]) -> Path:
    """``path`` as an ember checkpoint directory, or an error saying what it is instead."""
    found = Path(path)
    if found.is_file():
        kind = "a Lightning/torch.save file" if found.suffix in (".ckpt", ".pt", ".pth", ".bin") else "a file"
        raise EmberConfigError(
            f"{found} is {kind}, not an ember checkpoint: {_HOW}. ember never unpickles; load a torch.save file "
            "yourself with torch.load(path, weights_only=True) and module.load_state_dict(...)."
        )
    if not found.is_dir():
        raise EmberConfigError(f"checkpoint {found} does not exist; {_HOW}.")
    return found


def init_kwargs(cls: type[Any], saved: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Saved hyperparameters updated by ``overrides``, keeping only what ``cls.__init__`` accepts (as Lightning)."""
    merged = {**saved, **overrides}
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return merged
    return {k: v for k, v in merged.items() if k in params}


def load_from_checkpoint(
    cls: type[M], checkpoint_path: str | os.PathLike[str], map_location: Any = None,
    hparams_file: str | os.PathLike[str] | None = None, strict: bool | None = None, **kwargs: Any,
) -> M:
    """See :meth:`ember.Module.load_from_checkpoint`."""
    path = checkpoint_dir(checkpoint_path)
    ckpt.verify(path)  # every file's size and sha256 against the manifest
    hparams: dict[str, Any] = {}
    not_data: list[str] = []
    if (path / "trainer.json").is_file():
        state = ckpt.load_state(path, "trainer")
        hparams, not_data = dict(state.get("hparams") or {}), list(state.get("hparams_not_data") or [])
    if hparams_file is not None:
        loaded = yaml.safe_load(Path(hparams_file).read_text())
        hparams.update(loaded if isinstance(loaded, dict) else {})
    missing = [name for name in not_data if name not in kwargs]
    if missing:
        shown = ", ".join(f"{name}=..." for name in missing)
        raise EmberConfigError(
            f"{cls.__name__}.load_from_checkpoint({str(path)!r}): the hyperparameters {missing} were objects, not "
            f"data, when saved (the checkpoint holds only their text: {[hparams.get(n) for n in missing]}). Pass "
            f"them again: {cls.__name__}.load_from_checkpoint(path, {shown})."
        )
    module = cls(**init_kwargs(cls, hparams, kwargs))
    weights = ckpt.read_model_weights(path)
    result = module.load_state_dict(weights, strict=True if strict is None else strict)
    if strict is False and (result.missing_keys or result.unexpected_keys):
        import warnings

        warnings.warn(f"load_from_checkpoint(strict=False): missing keys {result.missing_keys}, unexpected keys "
                      f"{result.unexpected_keys}.", stacklevel=3)
    if map_location is not None:
        if not isinstance(map_location, (str, torch.device)):
            raise EmberConfigError(
                f"load_from_checkpoint(map_location={map_location!r}): ember loads safetensors on the CPU and then "
                "moves the module; give a device such as 'cpu' or 'cuda:0' (no mapping functions or dicts)."
            )
        module.to(map_location)
    return module
