"""Calling hooks on callbacks and the module: only those that override them, timed by the profiler."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
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

    def reset(self) -> None:
        self._cache.clear()
        self._module_overrides.clear()

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
        module = self._trainer._module
        return self._fx(name, f"[LightningModule]{type(module).__name__}.{name}")

    @contextlib.contextmanager
    def _fx(self, name: str, action: str) -> Iterator[None]:
        module = self._trainer._module
        previous = module.__dict__.get("_current_fx_name") if module is not None else None
        if module is not None:
            module.__dict__["_current_fx_name"] = name
        try:
            if not self._trainer._profiling:
                yield
            else:
                with self._trainer.profiler.profile(action):
                    yield
        finally:
            if module is not None:
                module.__dict__["_current_fx_name"] = previous

    def callbacks(self, name: str, *args: Any, monitoring: bool | None = None) -> None:
        """``callback.<name>(trainer, module, *args)`` for every callback that overrides it."""
        listeners = self._listeners(name, monitoring)
        if not listeners:
            return
        trainer, module = self._trainer, self._trainer._module
        for cb in listeners:
            with self._fx(name, f"[Callback]{cb.state_key}.{name}"):
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
