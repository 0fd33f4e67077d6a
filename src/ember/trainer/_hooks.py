"""Calling hooks on callbacks and the module: only those that override them, timed by the profiler."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from ember.callbacks.base import Callback
from ember.trainer.module import Module, overrides

if TYPE_CHECKING:
    from ember.trainer.trainer import Trainer


def is_monitoring(callback: Callback) -> bool:
    """Callbacks that read metrics (checkpointing, early stopping) run after the module's epoch-end hook."""
    return bool(getattr(callback, "_monitors_metrics", False))


class Hooks:
    """Dispatches hook calls. Callbacks that keep a hook's no-op default are never called."""

    def __init__(self, trainer: Trainer) -> None:
        self._trainer = trainer
        self._cache: dict[tuple[str, bool | None], list[Callback]] = {}
        self._module_overrides: dict[str, bool] = {}
        self._labels: dict[int, str] = {}

    def reset(self) -> None:
        self._cache.clear()
        self._module_overrides.clear()
        self._labels.clear()

    def label(self, callback: Callback) -> str:
        """A short name for profiler rows: the class name, numbered when several callbacks share it."""
        found = self._labels.get(id(callback))
        if found is None:
            same = [cb for cb in self._trainer.callbacks if type(cb) is type(callback)]
            name = type(callback).__name__
            found = f"{name}#{same.index(callback)}" if len(same) > 1 and callback in same else name
            self._labels[id(callback)] = found
        return found

    def overridden(self, name: str) -> bool:
        """Whether the current module overrides hook ``name`` (cached for the run)."""
        found = self._module_overrides.get(name)
        if found is None:
            module = self._trainer._module
            found = self._module_overrides[name] = module is not None and overrides(module, Module, name)
        return found

    def _listeners(self, name: str, monitoring: bool | None) -> list[Callback]:
        key = (name, monitoring)
        found = self._cache.get(key)
        if found is None:
            found = [
                cb for cb in self._trainer.callbacks
                if overrides(cb, Callback, name) and (monitoring is None or is_monitoring(cb) == monitoring)
            ]
            self._cache[key] = found
        return found

    def fx(self, name: str) -> contextlib.AbstractContextManager[None]:
        """The block runs as the module's hook ``name`` (for ``self.log`` defaults and the profiler)."""
        if not self._trainer._profiling:
            return _FxScope(self._trainer, name, "")
        module = self._trainer._module
        return self._fx(name, f"[LightningModule]{type(module).__name__}.{name}")

    def _fx(self, name: str, action: str) -> _FxScope:
        return _FxScope(self._trainer, name, action)

    def callbacks(self, name: str, *args: Any, monitoring: bool | None = None) -> None:
        """``callback.<name>(trainer, module, *args)`` for every callback that overrides it."""
        listeners = self._listeners(name, monitoring)
        if not listeners:
            return
        trainer, module = self._trainer, self._trainer._module
        profiling = trainer._profiling
        for cb in listeners:
            with _FxScope(trainer, name, f"[Callback]{self.label(cb)}.{name}" if profiling else ""):
                getattr(cb, name)(trainer, module, *args)

    def module(self, name: str, *args: Any, force: bool = False, **kwargs: Any) -> Any:
        """``module.<name>(*args)`` if the module overrides it (else the no-op is skipped); ``force`` calls
        hooks whose default does work (optimizer_step, backward, ...)."""
        module = self._trainer._module
        if module is None:
            return None
        if not self.overridden(name):
            if not force:
                return None
            if not self._trainer._profiling:  # the default needs no hook context
                return getattr(module, name)(*args, **kwargs)
        with self._fx(name, f"[LightningModule]{type(module).__name__}.{name}"):
            return getattr(module, name)(*args, **kwargs)

    def call(self, name: str, *args: Any) -> Any:
        """Callbacks first, then the module (Lightning's order); returns the module's result."""
        self.callbacks(name, *args)
        return self.module(name, *args)

    def call_monitored(self, name: str, *args: Any, before_monitors: Any = None) -> None:
        """Epoch-end order: plain callbacks, the module, ``before_monitors()``, then monitoring callbacks."""
        self.callbacks(name, *args, monitoring=False)
        self.module(name, *args)
        if before_monitors is not None:
            before_monitors()
        self.callbacks(name, *args, monitoring=True)


class _FxScope:
    """Marks the running hook on the module (for ``self.log`` defaults) and times it when profiling.

    A plain class rather than a generator context manager: it runs several times per training step.
    """

    __slots__ = ("_action", "_module", "_name", "_previous", "_profile", "_trainer")

    def __init__(self, trainer: Trainer, name: str, action: str) -> None:
        self._trainer, self._name, self._action = trainer, name, action
        self._module = trainer._module
        self._previous: Any = None
        self._profile: Any = None

    def __enter__(self) -> None:
        module = self._module
        if module is not None:
            d = module.__dict__
            self._previous = d.get("_current_fx_name")
            d["_current_fx_name"] = self._name
        if self._trainer._profiling:
            self._profile = self._trainer.profiler.profile(self._action)
            self._profile.__enter__()

    def __exit__(self, *exc: Any) -> None:
        try:
            if self._profile is not None:
                self._profile.__exit__(*exc)
        finally:
            if self._module is not None:
                self._module.__dict__["_current_fx_name"] = self._previous
