"""Hyperparameters shared by :class:`ember.Module` and :class:`ember.DataModule`: ``save_hyperparameters``."""

from __future__ import annotations

import inspect
import types
from collections.abc import Iterable, Mapping
from typing import Any


class AttributeDict(dict[str, Any]):
    """A dict whose keys are also attributes: ``hparams.lr`` is ``hparams["lr"]``.

    >>> AttributeDict(lr=0.1).lr
    0.1
    """

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError as err:
            raise AttributeError(f"hparams has no {key!r}; saved: {sorted(self)}") from err

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value

    def __delattr__(self, key: str) -> None:
        del self[key]


def _init_args(frame: types.FrameType) -> dict[str, Any]:
    info = inspect.getargvalues(frame)
    values = {name: info.locals[name] for name in info.args if name != "self" and name in info.locals}
    if info.keywords and isinstance(info.locals.get(info.keywords), Mapping):
        values.update(info.locals[info.keywords])
    return values


def _collect_init_args(frame: types.FrameType | None, owner: object) -> dict[str, Any]:
    """Arguments of every ``__init__`` on the stack that belongs to ``owner`` (outer classes win, as Lightning)."""
    frames: list[dict[str, Any]] = []
    while frame is not None and frame.f_code.co_name == "__init__" and frame.f_locals.get("self") is owner:
        frames.append(_init_args(frame))
        frame = frame.f_back
    merged: dict[str, Any] = {}
    for args in frames:
        merged.update(args)
    return merged


def hparams_from_call(
    owner: object, args: tuple[Any, ...], ignore: str | Iterable[str] | None, frame: types.FrameType | None
) -> dict[str, Any]:
    """What ``owner.save_hyperparameters(*args, ignore=...)`` records, read from the calling ``__init__`` frames.

    >>> class Net:
    ...     def __init__(self, width=8, lr=0.1):
    ...         self.hp = hparams_from_call(self, (), None, inspect.currentframe())
    >>> Net(width=4).hp
    {'width': 4, 'lr': 0.1}
    """
    if len(args) == 1 and not isinstance(args[0], str):
        given = args[0]
        values = dict(vars(given) if hasattr(given, "__dict__") and not isinstance(given, Mapping) else given)
    else:
        values = _collect_init_args(frame, owner)
        if args:
            missing = [name for name in args if name not in values]
            if missing:
                raise ValueError(f"save_hyperparameters{args}: {missing} are not arguments of __init__.")
            values = {name: values[name] for name in args}
    ignored = {ignore} if isinstance(ignore, str) else set(ignore or ())
    return {k: v for k, v in values.items() if k not in ignored and not k.startswith("_")}
