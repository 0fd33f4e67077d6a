"""Profilers for the Trainer (``Trainer(profiler="simple" | "advanced" | "pytorch" | Profiler)``).

The Trainer wraps its hooks in ``profiler.profile(action_name)``; the classes also work standalone.
"""

from __future__ import annotations

import abc
import contextlib
import cProfile
import difflib
import io
import os
import pstats
import re
import time
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    import torch.profiler

__all__ = [
    "AdvancedProfiler",
    "PassThroughProfiler",
    "Profiler",
    "PyTorchProfiler",
    "SimpleProfiler",
    "resolve_profiler",
]

_PATH: TypeAlias = "str | os.PathLike[str] | None"


class Profiler(abc.ABC):
    """Base class: time named actions between :meth:`start` and :meth:`stop`.

    Args:
        dirpath: Directory for report files; defaults to the ``log_dir`` given to :meth:`setup`.
        filename: If set, :meth:`describe` also appends the report to ``dirpath/<stage>-<filename>-<rank>.txt``.

    Example:
        >>> from ember.profilers import Profiler
        >>> class PrintProfiler(Profiler):
        ...     def start(self, action_name): print("start", action_name)
        ...     def stop(self, action_name): print("stop", action_name)
        >>> with PrintProfiler().profile("step"): pass
        start step
        stop step
    """

    def __init__(self, dirpath: _PATH = None, filename: str | None = None) -> None:
        self.dirpath = None if dirpath is None else os.fspath(dirpath)
        self.filename = filename
        self._stage: str | None = None
        self._local_rank: int | None = None

    @abc.abstractmethod
    def start(self, action_name: str) -> None:
        """Start recording ``action_name``."""

    @abc.abstractmethod
    def stop(self, action_name: str) -> None:
        """Stop recording ``action_name``."""

    def profile(self, action_name: str) -> contextlib.AbstractContextManager[str]:
        """Context manager recording its body as ``action_name``."""
        return self._profile(action_name)

    @contextlib.contextmanager
    def _profile(self, action_name: str) -> Iterator[str]:
        self.start(action_name)
        try:
            yield action_name
        finally:
            self.stop(action_name)

    def summary(self) -> str:
        """The report as text (empty when there is nothing to report)."""
        return ""

    def describe(self) -> None:
        """Print the report (local rank 0 only) and append it to ``dirpath/filename`` when set."""
        text = self.summary()
        if not text:
            return
        if self._local_rank in (None, 0):
            print(text)
        if self.filename:
            os.makedirs(self.dirpath or ".", exist_ok=True)
            path = os.path.join(self.dirpath or ".", self._prepare_filename())
            with open(path, "a", encoding="utf-8") as file:
                file.write(text + os.linesep)

    def setup(self, stage: str, local_rank: int | None = None, log_dir: str | None = None) -> None:
        """Called by the Trainer before ``stage`` (``"fit"``, ``"validate"``, ...) runs."""
        self._stage = stage
        self._local_rank = local_rank
        self.dirpath = self.dirpath or log_dir

    def teardown(self, stage: str | None) -> None:
        """Called by the Trainer after ``stage``; releases whatever :meth:`setup` acquired."""

    def _prepare_filename(self, action_name: str | None = None, extension: str = ".txt") -> str:
        rank = None if self._local_rank is None else str(self._local_rank)
        base = "-".join(p for p in (self._stage, self.filename, rank, action_name) if p)
        base = re.sub(r"_+", "_", re.sub(r"[\\/:*?\"<>|\n\r\t]", "_", base)).strip()
        return (base or "profile") + extension

    def _header(self) -> str:
        return f"{self._stage.upper()} Profiler Report" if self._stage else "Profiler Report"


class PassThroughProfiler(Profiler):
    """Does nothing, as cheaply as possible: the default when no profiler is requested.

    Example:
        >>> from ember.profilers import PassThroughProfiler
        >>> with PassThroughProfiler().profile("step") as name:
        ...     name
        'step'
    """

    def start(self, action_name: str) -> None:
        """No-op."""

    def stop(self, action_name: str) -> None:
        """No-op."""

    def profile(self, action_name: str) -> contextlib.AbstractContextManager[str]:
        """A ``nullcontext`` (no timing, no generator frame)."""
        return contextlib.nullcontext(action_name)


class SimpleProfiler(Profiler):
    """Wall-clock time per action with ``time.perf_counter``: calls, mean, total and % of the run.

    It never synchronises CUDA, so GPU-heavy actions show the time to *launch* their work; use
    :class:`PyTorchProfiler` for kernel times.

    Args:
        dirpath: Directory for the report file.
        filename: If set, the report is also appended to a ``.txt`` file in ``dirpath``.
        extended: Add the call count and percentage columns.

    Example:
        >>> from ember.profilers import SimpleProfiler
        >>> profiler = SimpleProfiler()
        >>> with profiler.profile("training_step"): pass
        >>> "training_step" in profiler.summary()
        True
    """

    def __init__(self, dirpath: _PATH = None, filename: str | None = None, extended: bool = True) -> None:
        super().__init__(dirpath=dirpath, filename=filename)
        self.extended = extended
        self.current_actions: dict[str, float] = {}
        self.recorded: dict[str, tuple[int, float]] = {}  # action -> (calls, total seconds)
        self.start_time = time.perf_counter()

    def start(self, action_name: str) -> None:
        """Start the clock for ``action_name`` (an action cannot nest inside itself)."""
        if action_name in self.current_actions:
            raise ValueError(f"Attempted to start {action_name!r}, which has already started.")
        self.current_actions[action_name] = time.perf_counter()

    def stop(self, action_name: str) -> None:
        """Stop the clock for ``action_name`` and add the duration."""
        end = time.perf_counter()
        begin = self.current_actions.pop(action_name, None)
        if begin is None:
            raise ValueError(f"Attempted to stop {action_name!r}, which was never started.")
        calls, total = self.recorded.get(action_name, (0, 0.0))
        self.recorded[action_name] = (calls + 1, total + end - begin)

    def summary(self) -> str:
        """A table sorted by total time: action, mean, calls, total, percentage of wall time."""
        if not self.recorded:
            return ""
        wall = time.perf_counter() - self.start_time
        rows = sorted(self.recorded.items(), key=lambda item: item[1][1], reverse=True)
        if self.extended:
            header = ["Action", "Mean duration (s)", "Num calls", "Total time (s)", "Percentage %"]
            body = [[a, f"{t / n:.5g}", str(n), f"{t:.5g}", f"{100 * t / wall:.3g}"] for a, (n, t) in rows]
            total_calls = sum(n for n, _ in self.recorded.values())
            body.insert(0, ["Total", "-", str(total_calls), f"{wall:.5g}", "100"])
        else:
            header = ["Action", "Mean duration (s)", "Total time (s)"]
            body = [[a, f"{t / n:.5g}", f"{t:.5g}"] for a, (n, t) in rows]
        widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
        lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in [header, *body]]
        rule = "-" * len(lines[0])
        return os.linesep.join([self._header(), rule, lines[0], rule, *lines[1:], rule])


class AdvancedProfiler(Profiler):
    """Function-level statistics per action with ``cProfile``, reported by ``pstats``.

    Nested actions are attributed to the innermost one (the outer profile pauses meanwhile).

    Args:
        dirpath: Directory for the report file (and ``.prof`` dumps).
        filename: If set, the report is also appended to a ``.txt`` file in ``dirpath``.
        line_count_restriction: Rows per action: an int count or a fraction in ``(0, 1]``.
        dump_stats: Also write each action's raw stats to ``dirpath`` as ``.prof`` (for snakeviz etc.).

    Example:
        >>> from ember.profilers import AdvancedProfiler
        >>> profiler = AdvancedProfiler(line_count_restriction=5)
        >>> with profiler.profile("work"): _ = sorted(range(1000))
        >>> "function calls" in profiler.summary()
        True
    """

    def __init__(
        self,
        dirpath: _PATH = None,
        filename: str | None = None,
        line_count_restriction: float = 1.0,
        dump_stats: bool = False,
    ) -> None:
        super().__init__(dirpath=dirpath, filename=filename)
        self.line_count_restriction = line_count_restriction
        self.dump_stats = dump_stats
        self.profiled_actions: dict[str, cProfile.Profile] = {}
        self._active: list[str] = []

    def start(self, action_name: str) -> None:
        """Pause the enclosing action's profile and start (or continue) this one."""
        if action_name in self._active:
            raise ValueError(f"Attempted to start {action_name!r}, which has already started.")
        if self._active:
            self.profiled_actions[self._active[-1]].disable()
        self._active.append(action_name)
        self.profiled_actions.setdefault(action_name, cProfile.Profile()).enable()

    def stop(self, action_name: str) -> None:
        """Stop this action's profile and resume the enclosing one."""
        if action_name not in self._active:
            raise ValueError(f"Attempted to stop {action_name!r}, which was never started.")
        self.profiled_actions[action_name].disable()
        self._active.remove(action_name)
        if self._active:
            self.profiled_actions[self._active[-1]].enable()

    def summary(self) -> str:
        """``pstats`` output per action, sorted by cumulative time."""
        sections = [self._header()]
        for action, prof in self.profiled_actions.items():
            if self.dump_stats:
                os.makedirs(self.dirpath or ".", exist_ok=True)
                prof.dump_stats(os.path.join(self.dirpath or ".", self._prepare_filename(action, ".prof")))
            stream = io.StringIO()
            try:
                stats = pstats.Stats(prof, stream=stream)
            except TypeError:  # nothing was recorded
                continue
            stats.strip_dirs().sort_stats("cumulative").print_stats(self.line_count_restriction)
            sections += [f"Profile stats for: {action}", stream.getvalue()]
        return os.linesep.join(sections) if len(sections) > 1 else ""

    def teardown(self, stage: str | None) -> None:
        """Stop any running profile."""
        for action in reversed(self._active):
            self.profiled_actions[action].disable()
        self._active.clear()


class PyTorchProfiler(Profiler):
    r"""Operator-level CPU/CUDA profile with ``torch.profiler``, plus a Chrome trace.

    Starts with the first action; each action is a ``record_function`` range ``[ember]<action>``.
    When it stops (:meth:`summary`, :meth:`describe`, :meth:`teardown`) the trace is written to
    ``dirpath/*.pt.trace.json`` (open in ``chrome://tracing`` or https://ui.perfetto.dev). With a
    ``schedule``, each ``*_step`` action steps the profiler and every active cycle writes a trace.

    Args:
        dirpath: Directory for traces and the report file.
        filename: If set, the report is also appended to a ``.txt`` file; also names the trace.
        record_shapes / profile_memory / with_stack: Passed to ``torch.profiler.profile``.
        schedule: A ``torch.profiler.schedule(...)`` to profile only some steps of long runs.
        export_to_chrome: Write the Chrome trace JSON.
        row_limit: Rows of the summary table (``-1``: all).
        sort_by_key: Summary sort column; default ``cuda_time_total`` if CUDA is profiled, else ``cpu_time_total``.
        group_by_input_shapes: Group the summary by input shapes (needs ``record_shapes``).
        \**profiler_kwargs: More ``torch.profiler.profile`` arguments (``activities``, ``with_flops``, ...).

    Example:
        >>> import tempfile, torch
        >>> from ember.profilers import PyTorchProfiler
        >>> profiler = PyTorchProfiler(dirpath=tempfile.mkdtemp())
        >>> with profiler.profile("training_step"): _ = torch.ones(8, 8) @ torch.ones(8, 8)
        >>> "aten::mm" in profiler.summary()
        True
    """

    STEP_FUNCTIONS = ("training_step", "validation_step", "test_step", "predict_step")
    AVAILABLE_SORT_KEYS = tuple(
        "count cpu_time cuda_time device_time cpu_time_total cuda_time_total device_time_total "
        "self_cpu_time_total self_cuda_time_total self_device_time_total cpu_memory_usage cuda_memory_usage "
        "device_memory_usage self_cpu_memory_usage self_cuda_memory_usage self_device_memory_usage".split()
    )

    def __init__(
        self,
        dirpath: _PATH = None,
        filename: str | None = None,
        record_shapes: bool = False,
        profile_memory: bool = False,
        with_stack: bool = False,
        schedule: Callable[[int], Any] | None = None,
        export_to_chrome: bool = True,
        row_limit: int = 20,
        sort_by_key: str | None = None,
        group_by_input_shapes: bool = False,
        **profiler_kwargs: Any,
    ) -> None:
        super().__init__(dirpath=dirpath, filename=filename)
        if sort_by_key is not None and sort_by_key not in self.AVAILABLE_SORT_KEYS:
            valid, hint = (
                ", ".join(self.AVAILABLE_SORT_KEYS),
                _did_you_mean(sort_by_key, self.AVAILABLE_SORT_KEYS),
            )
            raise ValueError(f"Invalid sort_by_key={sort_by_key!r}; valid keys: {valid}.{hint}")
        if schedule is not None and not callable(schedule):
            raise TypeError(
                f"schedule must be a callable like torch.profiler.schedule(...), not {schedule!r}."
            )
        self._kwargs: dict[str, Any] = {"record_shapes": record_shapes, "profile_memory": profile_memory}
        self._kwargs.update(with_stack=with_stack, **profiler_kwargs)
        self._schedule = schedule
        self._export_to_chrome = export_to_chrome
        self._row_limit = row_limit
        self._sort_by_key = sort_by_key
        self._group_by_input_shapes = group_by_input_shapes and record_shapes
        self.profiler: torch.profiler.profile | None = None
        self._ranges: dict[str, Any] = {}
        self._averages: Any = None
        self.trace_paths: list[str] = []

    def start(self, action_name: str) -> None:
        """Start the profiler if needed and open a ``record_function`` range for the action."""
        import torch.profiler

        if action_name in self._ranges:
            raise ValueError(f"Attempted to start {action_name!r}, which has already started.")
        if self.profiler is None:
            self._start_profiler()
        scope = torch.profiler.record_function(f"[ember]{action_name}")
        scope.__enter__()  # type: ignore[no-untyped-call]
        self._ranges[action_name] = scope

    def stop(self, action_name: str) -> None:
        """Close the action's range; with a schedule, ``*_step`` actions advance the profiler."""
        scope = self._ranges.pop(action_name, None)
        if scope is None:
            raise ValueError(f"Attempted to stop {action_name!r}, which was never started.")
        scope.__exit__(None, None, None)
        if self._schedule and self.profiler and action_name.endswith(self.STEP_FUNCTIONS):
            self.profiler.step()

    def _start_profiler(self) -> None:
        import torch
        from torch.profiler import ProfilerActivity

        kwargs = dict(self._kwargs)
        if not kwargs.get("activities"):
            cuda = torch.cuda.is_available()
            kwargs["activities"] = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
        if self._sort_by_key is None:
            cuda = ProfilerActivity.CUDA in kwargs["activities"]
            self._sort_by_key = "cuda_time_total" if cuda else "cpu_time_total"
        if self._schedule is not None:
            kwargs.update(schedule=self._schedule, on_trace_ready=self._on_trace_ready)
        self.profiler = torch.profiler.profile(**kwargs)
        self.profiler.__enter__()  # type: ignore[no-untyped-call]

    def _on_trace_ready(self, prof: torch.profiler.profile) -> None:
        self._averages = prof.key_averages(group_by_input_shape=self._group_by_input_shapes)
        if not self._export_to_chrome:
            return
        if self.dirpath is None:
            msg = "PyTorchProfiler has no dirpath, so no Chrome trace was written; pass dirpath=..."
            warnings.warn(msg + " (the Trainer sets it to its log_dir).", stacklevel=2)
            return
        suffix = f"-step{prof.step_num}" if self._schedule is not None else ""
        path = os.path.join(self.dirpath, self._prepare_filename(extension=f"{suffix}.pt.trace.json"))
        os.makedirs(self.dirpath, exist_ok=True)
        prof.export_chrome_trace(path)
        self.trace_paths.append(path)

    def _stop_profiler(self) -> None:
        for scope in reversed(list(self._ranges.values())):
            scope.__exit__(None, None, None)
        self._ranges.clear()
        prof, self.profiler = self.profiler, None
        if prof is None:
            return
        prof.__exit__(None, None, None)  # type: ignore[no-untyped-call]
        if self._schedule is None:
            self._on_trace_ready(prof)

    def summary(self) -> str:
        """Stop the profiler (writing the trace) and return the ``key_averages`` table."""
        self._stop_profiler()
        if self._averages is None or len(self._averages) == 0:
            return ""
        table = self._averages.table(sort_by=self._sort_by_key, row_limit=self._row_limit)
        return self._header() + os.linesep + str(table)

    def teardown(self, stage: str | None) -> None:
        """Stop the profiler (writing the trace) if it is still running."""
        self._stop_profiler()


def _did_you_mean(value: str, choices: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(value, choices, n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


_PROFILERS: dict[str, type[Profiler]] = {"simple": SimpleProfiler, "advanced": AdvancedProfiler}
_PROFILERS["pytorch"] = PyTorchProfiler


def resolve_profiler(value: str | Profiler | None) -> Profiler:
    """Turn the Trainer's ``profiler=`` argument into a :class:`Profiler`.

    ``None`` gives a :class:`PassThroughProfiler`; ``"simple"``, ``"advanced"`` and ``"pytorch"``
    give that profiler with default arguments; a :class:`Profiler` is returned as is.

    Example:
        >>> from ember.profilers import resolve_profiler
        >>> type(resolve_profiler("simple")).__name__
        'SimpleProfiler'
    """
    if value is None:
        return PassThroughProfiler()
    if isinstance(value, Profiler):
        return value
    if not isinstance(value, str):
        raise TypeError(f"profiler must be a name, a Profiler instance or None, got {type(value).__name__}.")
    cls = _PROFILERS.get(value.strip().lower())
    if cls is None:
        valid = ", ".join(repr(name) for name in _PROFILERS)
        hint = _did_you_mean(value.strip().lower(), tuple(_PROFILERS))
        raise ValueError(f"Unknown profiler {value!r}. Valid names: {valid} (or a Profiler, or None).{hint}")
    return cls()
