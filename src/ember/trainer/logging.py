"""The Trainer's metric store: what ``self.log`` records, kept on the device until someone reads it.

Semantics (Lightning's):

* ``on_step`` values: the latest value per name. With ``on_epoch`` too, loggers see ``<name>_step``.
* ``on_epoch`` values: accumulated over the epoch on the device — ``reduce_fx="mean"`` is weighted by the
  batch size (``batch_size=`` or the leading dimension of the current batch, found with
  :func:`ember.data.find_batch_size`), ``"sum"``, ``"max"`` and ``"min"`` as named. With ``on_step`` too,
  loggers see ``<name>_epoch``.
* ``sync_dist=True`` reduces across processes through the Accelerator — only when the value is read: at the
  log interval for step values, at the end of the epoch for epoch values (one collective per reduce op).
  Values are matched by name, never by the order each rank logged them in; with several processes one small
  collective first checks that every rank logged the same ``sync_dist`` names, and an
  :class:`~ember.EmberConfigError` names the ones that differ. Epoch values logged without ``sync_dist``
  under several processes get a one-time warning per name (each rank keeps its own value, as in Lightning).
* A ``torchmetrics.Metric`` object may be logged (``self.log("acc", self.accuracy)``): its step value is the
  batch value of the last ``metric(preds, target)`` call; its epoch value is ``metric.compute()`` (which
  synchronises across processes itself) followed by ``metric.reset()``, as in Lightning.
* ``callback_metrics`` / ``progress_bar_metrics`` / ``logged_metrics`` are dicts of tensors. Loggers receive
  Python floats every ``log_every_n_steps`` optimizer steps and at epoch ends: all tensors are stacked and
  read with a single host transfer.

>>> import torch
>>> store = MetricStore(lambda t, op: t, torch.device("cpu"))
>>> store.begin_batch(torch.zeros(3, 2)); _ = store.log("loss", torch.tensor(1.0), LogOptions(on_epoch=True))
>>> store.begin_batch(torch.zeros(1, 2)); _ = store.log("loss", torch.tensor(3.0), LogOptions(on_epoch=True))
>>> round(float(store.finalize_epoch()[0][1]), 3)   # (3*1 + 1*3) / 4
1.5
"""

from __future__ import annotations

import sys
import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ember._errors import EmberConfigError, unknown_value
from ember.data import find_batch_size

REDUCE_FX = ("mean", "sum", "max", "min")

#: hooks where ``self.log`` defaults to on_step=True, on_epoch=False (both may be set)
STEP_HOOKS = frozenset({
    "training_step", "on_train_batch_start", "on_train_batch_end", "on_before_backward", "backward",
    "on_after_backward", "on_before_optimizer_step", "optimizer_step", "configure_gradient_clipping",
    "clip_gradients", "on_before_zero_grad", "optimizer_zero_grad",
})
#: hooks where the default is on_step=False, on_epoch=True and both may be set
EVAL_STEP_HOOKS = frozenset({
    "validation_step", "test_step", "on_validation_batch_start", "on_validation_batch_end",
    "on_test_batch_start", "on_test_batch_end",
})
#: hooks where only on_epoch=True is allowed
EPOCH_HOOKS = frozenset({
    "on_train_start", "on_train_epoch_start", "on_train_epoch_end", "on_validation_start",
    "on_validation_epoch_start", "on_validation_epoch_end", "on_test_start", "on_test_epoch_start",
    "on_test_epoch_end",
})
_REDUCE_CALLABLES: dict[Any, str] = {
    torch.mean: "mean", torch.sum: "sum", torch.max: "max", torch.min: "min", sum: "sum", max: "max", min: "min",
}


@dataclass(frozen=True)
class LogOptions:
    """How one logged name is treated (resolved defaults, see :func:`resolve_options`)."""

    prog_bar: bool = False
    logger: bool = True
    on_step: bool = False
    on_epoch: bool = False
    reduce_fx: str = "mean"
    sync_dist: bool = False
    batch_size: int | None = None


def _key(options: LogOptions) -> tuple[Any, ...]:
    """Options that must not change for a name within an epoch (the batch size may)."""
    return (options.prog_bar, options.logger, options.on_step, options.on_epoch, options.reduce_fx, options.sync_dist)


def resolve_options(
    fx: str | None, name: str, on_step: bool | None, on_epoch: bool | None, reduce_fx: Any
) -> tuple[bool, bool, str]:
    """Apply Lightning's per-hook defaults and reject logging where it has no meaning."""
    if fx in STEP_HOOKS:
        step, epoch = True, False
    elif fx in EVAL_STEP_HOOKS or fx in EPOCH_HOOKS:
        step, epoch = False, True
    else:
        where = f"in {fx}" if fx else "outside a Trainer hook"
        raise EmberConfigError(
            f"self.log({name!r}) {where}: logging is supported in training/validation/test steps, their "
            f"on_*_batch_* hooks, epoch hooks and the backward/optimizer hooks ({', '.join(sorted(STEP_HOOKS))})."
        )
    step = step if on_step is None else bool(on_step)
    epoch = epoch if on_epoch is None else bool(on_epoch)
    if fx in EPOCH_HOOKS and step:
        raise EmberConfigError(f"self.log({name!r}, on_step=True) in {fx}: only on_epoch=True is allowed there.")
    if not (step or epoch):
        raise EmberConfigError(f"self.log({name!r}) with on_step=False and on_epoch=False records nothing.")
    if callable(reduce_fx):
        reduce = _REDUCE_CALLABLES.get(reduce_fx)
        if reduce is None:
            raise EmberConfigError(f"self.log({name!r}, reduce_fx={reduce_fx!r}): use one of {list(REDUCE_FX)}.")
    else:
        reduce = str(reduce_fx).lower()
        if reduce not in REDUCE_FX:
            raise unknown_value("reduce_fx", reduce_fx, REDUCE_FX)
    return step, epoch, reduce


def _as_value(name: str, value: Any) -> torch.Tensor | float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise EmberConfigError(f"self.log({name!r}) got a tensor of shape {tuple(value.shape)}; log scalars.")
        tensor: torch.Tensor = value.detach().reshape(())
        return tensor if tensor.is_floating_point() else tensor.float()
    if isinstance(value, (bool, int, float)):
        return float(value)
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        return float(item())
    raise EmberConfigError(
        f"self.log({name!r}) got {type(value).__name__}; log a number or a one-element tensor "
        "(use self.log_dict for a dict)."
    )


def is_metric_object(value: Any) -> bool:
    """A ``torchmetrics.Metric`` (checked without importing torchmetrics: it is optional)."""
    module = sys.modules.get("torchmetrics")
    metric_cls = getattr(module, "Metric", None) if module is not None else None
    return metric_cls is not None and isinstance(value, metric_cls)


def _metric_value(name: str, value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        raise EmberConfigError(
            f"self.log({name!r}, <torchmetrics metric>): its compute() returned "
            f"{type(value).__name__ if not isinstance(value, torch.Tensor) else tuple(value.shape)}; self.log takes "
            "metrics that compute a scalar (log the parts of a MetricCollection or a per-class metric one by one)."
        )
    tensor: torch.Tensor = value.detach().reshape(())
    return tensor if tensor.is_floating_point() else tensor.float()


def names_digest(names: Sequence[str]) -> int:
    """A 32-bit digest of an ordered list of metric names (compared across ranks before a sync)."""
    return zlib.crc32("\x00".join(names).encode())


def mismatch_message(per_rank: Sequence[Sequence[str]]) -> str:
    """Which ``sync_dist`` names each rank logged, and which are missing somewhere."""
    union = sorted({n for names in per_rank for n in names})
    partial = [n for n in union if any(n not in names for names in per_rank)]
    listing = "; ".join(f"rank {r}: {sorted(names)}" for r, names in enumerate(per_rank))
    return (
        f"self.log(..., sync_dist=True): the processes logged different metrics, which cannot be reduced together "
        f"({listing}). Not logged on every rank: {partial}. Log each sync_dist metric on every rank at the same "
        "steps (with the same reduce_fx), or drop sync_dist for values that are local to one rank."
    )


def _combine(op: str, a: Any, b: Any) -> Any:
    if a is None:
        return b
    if op == "sum":
        return a + b
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not isinstance(a, torch.Tensor):
            a, b = b, a
        if isinstance(b, torch.Tensor):
            return torch.maximum(a, b) if op == "max" else torch.minimum(a, b)
        return a.clamp_min(b) if op == "max" else a.clamp_max(b)
    return max(a, b) if op == "max" else min(a, b)


def _tensor(value: Any, device: torch.device | None = None) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value if device is None else value.to(device)
    return torch.tensor(float(value), device=device)


class _Entry:
    __slots__ = ("dirty", "epoch_name", "fresh", "metric", "name", "options", "step_name", "total", "value", "weight")

    def __init__(self, name: str, options: LogOptions) -> None:
        self.name = name
        self.options = options
        self.step_name = f"{name}_step" if options.on_epoch else name
        self.epoch_name = f"{name}_epoch" if options.on_step else name
        self.value: Any = None  # latest step value
        self.total: Any = None  # epoch accumulator
        self.weight = 0
        self.fresh = False  # a step value not yet sent to the loggers
        self.dirty = False  # epoch data not yet finalized
        self.metric: Any = None  # a logged torchmetrics.Metric: computed and reset at the end of the epoch

    @property
    def synced(self) -> bool:
        """Reduced by ember across processes (a torchmetrics Metric synchronises itself in compute())."""
        return self.options.sync_dist and self.metric is None


class MetricStore:
    """Values logged during one stage (training, validation or test) of the current epoch."""

    def __init__(
        self, reduce: Callable[[torch.Tensor, str], torch.Tensor], device: torch.device,
        agree: Callable[[list[str]], None] | None = None,
    ) -> None:
        self._reduce = reduce
        self._device = device
        self._agree = agree  # with several processes: checks every rank syncs the same names (a collective)
        self.entries: dict[str, _Entry] = {}
        self.suffix = ""  # "/dataloader_idx_N" with several evaluation loaders
        self._batch: Any = None
        self._batch_size: int | None = None

    def begin_batch(self, batch: Any) -> None:
        self._batch, self._batch_size = batch, None

    def _current_batch_size(self) -> int:
        if self._batch_size is None:
            size = find_batch_size(self._batch) if self._batch is not None else None
            self._batch_size = size if size is not None else 1
        return self._batch_size

    def log(self, name: str, value: Any, options: LogOptions) -> _Entry:
        key = name + self.suffix
        entry = self.entries.get(key)
        if entry is None:
            entry = self.entries[key] = _Entry(key, options)
        elif entry.options is not options and entry.options != options and _key(entry.options) != _key(options):
            raise EmberConfigError(f"self.log({name!r}) was called before with different options in this epoch.")
        opts = entry.options
        if is_metric_object(value):
            return self._log_metric_object(entry, value)
        v = _as_value(name, value)
        if opts.on_step:
            entry.value, entry.fresh = v, True
        if opts.on_epoch:
            if opts.reduce_fx == "mean":
                size = options.batch_size if options.batch_size is not None else self._current_batch_size()
                entry.total = _combine("sum", entry.total, v * size)
                entry.weight += size
            else:
                entry.total = _combine(opts.reduce_fx, entry.total, v)
            entry.dirty = True
        return entry

    def _log_metric_object(self, entry: _Entry, metric: Any) -> _Entry:
        """A torchmetrics Metric: the step value is its last batch value; the epoch value is computed later."""
        entry.metric = metric
        if entry.options.on_step:
            cached = getattr(metric, "_forward_cache", None)  # set by metric(preds, target), not by update()
            if isinstance(cached, torch.Tensor) and cached.numel() == 1:
                entry.value, entry.fresh = _metric_value(entry.name, cached), True
        if entry.options.on_epoch:
            entry.dirty = True
        return entry

    def _synced(self, entries: list[_Entry]) -> list[_Entry]:
        """The entries ember reduces, sorted by name; every rank first checks the others sync the same names."""
        synced = sorted((e for e in entries if e.synced), key=lambda e: e.name)
        if self._agree is not None:
            self._agree([e.name if e.options.reduce_fx == "mean" else f"{e.name} (reduce_fx={e.options.reduce_fx})"
                         for e in synced])
        return synced

    def flush_step(self) -> list[tuple[_Entry, torch.Tensor]]:
        """Fresh step values (reduced across processes where ``sync_dist``), marked as sent."""
        fresh = [e for e in self.entries.values() if e.fresh]
        for entry in fresh:
            entry.fresh = False
        synced = self._synced(fresh)
        reduced = self._sync([(e.options.reduce_fx, [_tensor(e.value, self._device)]) for e in synced])
        values = {id(e): r[0] for e, r in zip(synced, reduced)}
        return [(e, values.get(id(e), _tensor(e.value))) for e in fresh]

    def finalize_epoch(self) -> list[tuple[_Entry, torch.Tensor]]:
        """Epoch values of the entries that changed since the last call (collective for ``sync_dist``)."""
        dirty = [e for e in self.entries.values() if e.dirty]
        for entry in dirty:
            entry.dirty = False
        synced = self._synced(dirty)
        parts = [
            ("sum", [_tensor(e.total, self._device), _tensor(float(e.weight), self._device)])
            if e.options.reduce_fx == "mean" else (e.options.reduce_fx, [_tensor(e.total, self._device)])
            for e in synced
        ]
        reduced = {id(e): r for e, r in zip(synced, self._sync(parts))}
        out = []
        for entry in dirty:
            if entry.metric is not None:  # compute() synchronises across processes itself; then a new epoch
                out.append((entry, _metric_value(entry.name, entry.metric.compute())))
                entry.metric.reset()
                continue
            parts_e = reduced.get(id(entry))
            if parts_e is None:
                parts_e = [_tensor(entry.total), _tensor(float(entry.weight))]
            if entry.options.reduce_fx == "mean":
                weight = parts_e[1] if entry.synced else float(entry.weight)
                value = parts_e[0] / weight
            else:
                value = parts_e[0]
            out.append((entry, value))
        return out

    def _sync(self, parts: list[tuple[str, list[torch.Tensor]]]) -> list[list[torch.Tensor]]:
        """Reduce each group of tensors with its op; one collective per distinct op."""
        results: list[list[torch.Tensor]] = [[] for _ in parts]
        for op in REDUCE_FX:
            chosen = [i for i, (o, _) in enumerate(parts) if o == op]
            if not chosen:
                continue
            flat = torch.stack([t.to(self._device, torch.float64 if t.dtype == torch.float64 else torch.float32)
                                for i in chosen for t in parts[i][1]])
            reduced = self._reduce(flat, op)
            pos = 0
            for i in chosen:
                n = len(parts[i][1])
                results[i] = list(reduced[pos : pos + n])
                pos += n
        return results

    def reset(self) -> None:
        self.entries.clear()
        self.suffix = ""
        self._batch, self._batch_size = None, None


def to_floats(values: Mapping[str, Any]) -> dict[str, float]:
    """Python floats for loggers: every tensor is read in one host transfer per device."""
    out: dict[str, float] = {}
    by_device: dict[torch.device, list[tuple[str, torch.Tensor]]] = {}
    for key, value in values.items():
        if isinstance(value, torch.Tensor):
            by_device.setdefault(value.device, []).append((key, value))
        else:
            out[key] = float(value)
    for device, items in by_device.items():
        dtype = torch.float32 if device.type == "mps" else torch.float64
        stacked = torch.stack([v.detach().reshape(()).to(dtype) for _, v in items]).tolist()
        out.update({k: float(f) for (k, _), f in zip(items, stacked)})
    return {k: out[k] for k in values}


class MetricsHub:
    """The Trainer's view of all stores: ``callback_metrics``, ``logged_metrics``, ``progress_bar_metrics``."""

    def __init__(
        self, reduce: Callable[[torch.Tensor, str], torch.Tensor], device: torch.device,
        agree: Callable[[list[str]], None] | None = None, warn_unsynced: bool = False,
    ) -> None:
        self.callback_metrics: dict[str, torch.Tensor] = {}
        self.logged_metrics: dict[str, torch.Tensor] = {}
        self.progress_bar_metrics: dict[str, torch.Tensor] = {}
        self.train = MetricStore(reduce, device, agree)
        self.eval = MetricStore(reduce, device, agree)
        self.active: MetricStore | None = None
        self.training = False  # step values of the training store also feed callback_metrics
        self._options: dict[tuple[Any, ...], LogOptions] = {}
        self._warn_unsynced = warn_unsynced  # several processes, global rank 0: say once per unsynced epoch value
        self._warned: set[str] = set()

    def reset_metrics(self) -> None:
        """Empty ``callback_metrics``, ``logged_metrics`` and ``progress_bar_metrics`` (a new fit/validate/...)."""
        self.callback_metrics.clear()
        self.logged_metrics.clear()
        self.progress_bar_metrics.clear()

    def log(self, fx: str | None, name: str, value: Any, **kw: Any) -> None:
        store = self.active
        if store is None:
            raise EmberConfigError(f"self.log({name!r}) called outside fit/validate/test (in {fx or 'no hook'}).")
        rfx = kw["reduce_fx"]
        key = (fx, name, kw["prog_bar"], kw["logger"], kw["on_step"], kw["on_epoch"], rfx if isinstance(rfx, str) else id(rfx),
               kw["sync_dist"], kw["batch_size"])
        options = self._options.get(key)
        if options is None:  # resolved once per distinct call site, not per step
            on_step, on_epoch, reduce = resolve_options(fx, name, kw["on_step"], kw["on_epoch"], rfx)
            options = LogOptions(kw["prog_bar"], kw["logger"], on_step, on_epoch, reduce, kw["sync_dist"],
                                 kw["batch_size"])
            if len(self._options) < 4096:
                self._options[key] = options
        entry = store.log(name, value, options)
        if options.on_step and entry.value is not None:
            tensor = _tensor(entry.value)
            if store is self.train:
                self.callback_metrics[entry.name] = tensor
                self.callback_metrics[entry.step_name] = tensor
            if options.prog_bar:
                self.progress_bar_metrics[entry.step_name] = tensor

    def step_log(self, store: MetricStore) -> dict[str, torch.Tensor]:
        """Values to send at a log interval (collective where ``sync_dist``)."""
        out: dict[str, torch.Tensor] = {}
        for entry, value in store.flush_step():
            if entry.options.logger:
                out[entry.step_name] = value
            if entry.options.sync_dist:
                if store is self.train:
                    self.callback_metrics[entry.name] = self.callback_metrics[entry.step_name] = value
                if entry.options.prog_bar:
                    self.progress_bar_metrics[entry.step_name] = value
        self.logged_metrics.update(out)
        return out

    def epoch_log(self, store: MetricStore) -> dict[str, torch.Tensor]:
        """Finalize the epoch values of ``store``: update the three dicts, return what loggers get."""
        out: dict[str, torch.Tensor] = {}
        finalized = store.finalize_epoch()
        if self._warn_unsynced:
            self._warn_about_unsynced([entry for entry, _ in finalized])
        for entry, value in finalized:
            self.callback_metrics[entry.name] = value
            self.callback_metrics[entry.epoch_name] = value
            if entry.options.prog_bar:
                self.progress_bar_metrics[entry.epoch_name] = value
            if entry.options.logger:
                out[entry.epoch_name] = value
        self.logged_metrics.update(out)
        return out

    def _warn_about_unsynced(self, entries: list[_Entry]) -> None:
        """Lightning's advice, once per name: epoch values of tensors logged without sync_dist stay per rank."""
        names = sorted(e.name for e in entries
                       if not e.options.sync_dist and e.metric is None and isinstance(e.total, torch.Tensor)
                       and e.name not in self._warned)
        if not names:
            return
        self._warned.update(names)
        shown = ", ".join(repr(n) for n in names)
        warnings.warn(
            f"{shown} logged on epoch level without sync_dist in a multi-process run: each process keeps its own "
            f"value (this process shows rank 0's). Use self.log({names[0]!r}, ..., sync_dist=True) to reduce it "
            "across processes.", UserWarning, stacklevel=2,
        )


def agree_on_names(
    names: list[str], reduce: Callable[[torch.Tensor, str], torch.Tensor],
    gather: Callable[[list[str]], list[list[str]]], device: torch.device,
) -> None:
    """Every rank calls this with the names it is about to reduce; raises on every rank if they differ.

    One all-reduce (MAX) of ``[digest, -digest]``: equal on every rank iff max == min. Only on a mismatch are the
    names gathered, to say which differ.
    """
    digest = names_digest(names)
    flags = reduce(torch.tensor([digest, -digest], dtype=torch.int64, device=device), "max").tolist()
    if flags[0] == -flags[1]:
        return
    raise EmberConfigError(mismatch_message(gather(names)))


def check_log_options(name: str, enable_graph: bool, sync_dist: bool, sync_dist_group: Any,
                       rank_zero_only: bool) -> None:
    """The ``self.log`` options ember does not take refuse loudly instead of being ignored."""
    if enable_graph:
        raise EmberConfigError(f"self.log({name!r}, enable_graph=True): logged values are detached in ember (they are "
                               "read at the log interval). Log loss.detach() and keep your own reference for the graph.")
    if sync_dist_group is not None:
        raise EmberConfigError(f"self.log({name!r}, sync_dist_group=...): sync_dist=True reduces over the data-parallel "
                               "processes; a custom group is not supported. Reduce it yourself with "
                               "torch.distributed and log the result.")
    if rank_zero_only and sync_dist:
        raise EmberConfigError(f"self.log({name!r}, rank_zero_only=True, sync_dist=True): a value logged on rank 0 "
                               "only cannot be synchronised across ranks; drop one of them.")
