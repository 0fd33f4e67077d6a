"""Precision plugins: one small object per mode owns autocast, loss scaling and module conversion.

Accepted strings (Accelerate and Lightning spellings):

=============================  ==================================================
``"no"``, ``"32"``, ``"32-true"``   float32 everywhere (default)
``"64-true"``, ``"64"``             float64 parameters and inputs
``"fp16"``, ``"16-mixed"``, ``"16"`` float16 autocast + dynamic loss scaling (GradScaler)
``"bf16"``, ``"bf16-mixed"``        bfloat16 autocast, no scaling needed
``"16-true"``, ``"bf16-true"``      module and floating inputs converted to that dtype
=============================  ==================================================
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from ember._errors import unknown_value

PRECISION_ALIASES: dict[str, str] = {
    "no": "32-true",
    "32": "32-true",
    "32-true": "32-true",
    "fp32": "32-true",
    "64": "64-true",
    "64-true": "64-true",
    "fp16": "16-mixed",
    "16": "16-mixed",
    "16-mixed": "16-mixed",
    "bf16": "bf16-mixed",
    "bf16-mixed": "bf16-mixed",
    "16-true": "16-true",
    "bf16-true": "bf16-true",
}


class Precision:
    """Hooks a precision mode into the step. The default is full float32 and does nothing.

    Subclass and override any hook to add a mode; pass the object as ``mixed_precision=`` / ``precision=``.
    """

    name: str = "32-true"
    #: dtype of floating inputs and of the module after :meth:`convert_module`, if converted.
    param_dtype: torch.dtype | None = None
    #: prepared models run their forward under :meth:`autocast` when True.
    uses_autocast: bool = False

    def convert_module(self, module: torch.nn.Module) -> torch.nn.Module:
        return module

    def convert_input(self, data: Any) -> Any:
        return data

    def autocast(self, device_type: str) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        return loss

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring gradients back to their true scale before clipping or stepping (idempotent per step)."""

    def optimizer_step(self, optimizer: torch.optim.Optimizer, **kwargs: Any) -> Any:
        """Step ``optimizer``; return whether the step was skipped (e.g. inf/NaN gradients under fp16): a bool, or
        a lazily read flag such as :class:`LazyFlag` that keeps the decision on the device."""
        optimizer.step(**kwargs)
        return False

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class LazyFlag:
    """A device-side boolean read only when asked (``bool(flag)``): on CUDA it is copied to pinned host memory
    behind an event, so reading it waits for the work that computed it, not for everything queued since.

    >>> bool(LazyFlag(torch.tensor(True))), bool(LazyFlag(torch.tensor(False)))
    (True, False)
    """

    __slots__ = ("_event", "_value")

    def __init__(self, tensor: torch.Tensor) -> None:
        self._event: Any = None
        if tensor.is_cuda:
            host = torch.empty((), dtype=tensor.dtype, pin_memory=True)
            host.copy_(tensor, non_blocking=True)
            self._event = torch.cuda.Event()  # type: ignore[no-untyped-call,unused-ignore]
            self._event.record()
            tensor = host
        self._value = tensor

    def __bool__(self) -> bool:
        if self._event is not None:
            self._event.synchronize()
            self._event = None
        return bool(self._value)

    def __repr__(self) -> str:
        return f"LazyFlag({bool(self)})"


class MixedPrecision(Precision):
    """Autocast to float16 or bfloat16; float16 adds a dynamic GradScaler that skips overflowing steps.

    The skip decision stays on the device (a :class:`LazyFlag` built from the scaler's own ``found_inf``): ember
    adds no host synchronisation to the step. A sharded strategy passes ``scaler_cls`` (e.g. torch's
    ``ShardedGradScaler``) so every rank agrees on an overflow found in any rank's shard.
    """

    def __init__(
        self, dtype: torch.dtype, device_type: str, scaler_kwargs: dict[str, Any] | None = None,
        scaler_cls: Any = None,
    ):
        self.dtype = dtype
        self.uses_autocast = True
        self.name = "16-mixed" if dtype == torch.float16 else "bf16-mixed"
        self.scaler_kwargs = dict(scaler_kwargs or {})
        #: a prepared model called outside autocast hands back its float16/bfloat16 outputs as float32 (as
        #: Accelerate and Fabric do); the Trainer turns this off, as Lightning leaves outputs as computed
        self.float32_outputs = True
        self.scaler: torch.amp.GradScaler | None = None
        if dtype == torch.float16:
            cls = scaler_cls or torch.amp.GradScaler
            self.scaler = cls(device_type, **self.scaler_kwargs)
        self._unscaled: set[int] = set()

    def autocast(self, device_type: str) -> contextlib.AbstractContextManager[Any]:
        return torch.autocast(device_type=device_type, dtype=self.dtype)

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        return self.scaler.scale(loss) if self.scaler is not None else loss

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is not None and id(optimizer) not in self._unscaled:
            self.scaler.unscale_(optimizer)
            self._unscaled.add(id(optimizer))

    def optimizer_step(self, optimizer: torch.optim.Optimizer, **kwargs: Any) -> Any:
        if self.scaler is None or not self.scaler.is_enabled():
            optimizer.step(**kwargs)
            return False
        self.unscale_(optimizer)  # records found_inf for this optimizer (a device tensor per device)
        found = self.scaler._per_optimizer_states[id(optimizer)]["found_inf_per_device"]
        flags = [f.reshape(()).to(self.scaler._scale.device) for f in found.values()]  # type: ignore[union-attr]
        skipped = LazyFlag(torch.stack(flags).sum() > 0) if flags else False
        self.scaler.step(optimizer, **kwargs)
        self.scaler.update()
        self._unscaled.discard(id(optimizer))
        return skipped

    def state_dict(self) -> dict[str, Any]:
        return {"scaler": self.scaler.state_dict()} if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])


class TruePrecision(Precision):
    """Parameters and floating inputs converted to one dtype (float64, float16 or bfloat16)."""

    def __init__(self, dtype: torch.dtype):
        self.param_dtype = dtype
        self.name = {torch.float64: "64-true", torch.float16: "16-true", torch.bfloat16: "bf16-true"}[dtype]

    def convert_module(self, module: torch.nn.Module) -> torch.nn.Module:
        return module.to(dtype=self.param_dtype)

    def convert_input(self, data: Any) -> Any:
        dtype = self.param_dtype
        assert dtype is not None

        def convert(t: torch.Tensor) -> torch.Tensor:
            return t.to(dtype) if torch.is_floating_point(t) else t

        from ember.data import apply_to_tensors

        return apply_to_tensors(data, convert)


def resolve_precision(
    value: str | Precision | None, device_type: str, scaler_kwargs: dict[str, Any] | None = None
) -> Precision:
    """Turn a precision string (or object) into a :class:`Precision`.

    >>> resolve_precision("bf16", "cpu").name
    'bf16-mixed'
    """
    if isinstance(value, Precision):
        return value
    key = "32-true" if value is None else str(value).lower()
    if key not in PRECISION_ALIASES:
        raise unknown_value("mixed_precision", value, list(PRECISION_ALIASES))
    canonical = PRECISION_ALIASES[key]
    if canonical == "32-true":
        return Precision()
    if canonical == "16-mixed":
        return MixedPrecision(torch.float16, device_type, scaler_kwargs)
    if canonical == "bf16-mixed":
        return MixedPrecision(torch.bfloat16, device_type)
    dtype = {"64-true": torch.float64, "16-true": torch.float16, "bf16-true": torch.bfloat16}[canonical]
    return TruePrecision(dtype)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype | None) -> Iterator[None]:
    """Temporarily set torch's default floating dtype (used to build modules directly in a true precision)."""
    if dtype is None:
        yield
        return
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)
