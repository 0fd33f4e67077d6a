"""Profilers for the Trainer: ``Trainer(profiler="simple" | "advanced" | "pytorch" | Profiler)``."""

from __future__ import annotations

import abc
import contextlib
import cProfile
import io
import os
import pstats
import re
import time
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeAlias

from ember.loggers._utils import did_you_mean

if TYPE_CHECKING:
    import torch.profiler

__all__ = ["AdvancedProfiler", "PassThroughProfiler", "Profiler", "PyTorchProfiler", "SimpleProfiler"]
__all__ += ["resolve_profiler"]

_PATH: TypeAlias = "str | os.PathLike[str] | None"


class Profiler(abc.ABC):
    """Base class: records named actions between :meth:`start` and :meth:`stop` (or in :meth:`profile`).

    Args:
        dirpath: Directory for report files; defaults to the ``log_dir`` given to :meth:`setup`.
        filename: If set, :meth:`describe` also appends the report to ``dirpath/<stage>-<filename>-<rank>.txt``.

    Example:
        >>> from ember.profilers import Profiler
        >>> class PrintProfiler(Profiler):
        ...     def start(self, action_name): print("start", action_name)
        ...     def stop(self, action_name): print("stop", action_name)
        >>> with PrintProfiler().profile("step"): print("body")
        start step
        body
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
        """The full report as text (empty when there is nothing to report)."""
        return ""

    def terminal_summary(self) -> str:
        """What :meth:`describe` prints: the top of the report, sized for a terminal (default: all of it)."""
        return self.summary()

    def describe(self) -> None:
        """Print the top of the report (local rank 0 only); the full report goes to a file when the printed part
        is shorter, or when ``filename`` is set (``dirpath/<stage>-<filename>-<rank>.txt``, appended)."""
        text = self.summary()
        if not text:
            return
        short = self.terminal_summary()
        path = None
        if self.filename or short != text:
            os.makedirs(self.dirpath or ".", exist_ok=True)
            path = os.path.join(self.dirpath or ".", self._prepare_filename(default="profile"))
            with open(path, "a") as file:
                file.write(text + os.linesep)
        if self._local_rank in (None, 0):
            print(short if short == text else f"{short}{os.linesep}Full report: {path}")

    def setup(self, stage: str, local_rank: int | None = None, log_dir: str | None = None) -> None:
        """Called by the Trainer before ``stage`` (``"fit"``, ``"validate"``, ...) runs."""
        self._stage, self._local_rank, self.dirpath = stage, local_rank, self.dirpath or log_dir

    def teardown(self, stage: str | None) -> None:
        """Called by the Trainer after ``stage``; releases whatever :meth:`setup` acquired."""

    def _prepare_filename(self, action_name: str | None = None, extension: str = ".txt", default: str = "") -> str:
        rank = None if self._local_rank is None else str(self._local_rank)
        base = "-".join(p for p in (self._stage, self.filename or default, rank, action_name) if p)
        base = re.sub(r"_+", "_", re.sub(r"[\\/:*?\"<>|\n\r\t]", "_", base)).strip()
        return (base or "profile") + extension

    def _header(self) -> str:
        return f"{self._stage.upper()} Profiler Report" if self._stage else "Profiler Report"


class PassThroughProfiler(Profiler):
    """Does nothing, as cheaply as possible: the default when no profiler is requested.

    Example:
        >>> from ember.profilers import PassThroughProfiler
        >>> with PassThroughProfiler().profile("step") as name: print(name)
        step
    """

    def start(self, action_name: str) -> None:
        """No-op."""

    def stop(self, action_name: str) -> None:
        """No-op."""

    def profile(self, action_name: str) -> contextlib.AbstractContextManager[str]:
        """A ``nullcontext`` (no timing, no generator frame)."""
        return contextlib.nullcontext(action_name)


class SimpleProfiler(Profiler):
    """Wall-clock time per action (``time.perf_counter``): calls, mean, total and % of the run.

    It never synchronises CUDA: GPU actions show their launch time (:class:`PyTorchProfiler` shows kernels).

    Args:
        dirpath, filename: Where :meth:`describe` also writes the report (see :class:`Profiler`).
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

    #: rows and action-name width of the printed table (the full table goes to a file, see :meth:`describe`)
    TERMINAL_ROWS, NAME_WIDTH = 15, 60

    def summary(self) -> str:
        """A table sorted by total time: action, mean, calls, total, percentage of wall time (every action)."""
        return self._table(None, None)

    def terminal_summary(self) -> str:
        """The :data:`TERMINAL_ROWS` actions that took longest, names cut to :data:`NAME_WIDTH` characters."""
        return self._table(self.TERMINAL_ROWS, self.NAME_WIDTH)

    def _table(self, rows_limit: int | None, name_width: int | None) -> str:
        if not self.recorded:
            return ""
        wall = time.perf_counter() - self.start_time
        rows = sorted(self.recorded.items(), key=lambda item: item[1][1], reverse=True)
        hidden = len(rows) - rows_limit if rows_limit is not None and len(rows) > rows_limit else 0
        rows = rows[: len(rows) - hidden]
        header = ["Action", "Mean duration (s)", "Num calls", "Total time (s)", "Percentage %"]
        body = [[_cut(a, name_width), f"{t / n:.5g}", str(n), f"{t:.5g}", f"{100 * t / wall:.3g}"]
                for a, (n, t) in rows]
        body.insert(0, ["Total", "-", str(sum(n for n, _ in self.recorded.values())), f"{wall:.5g}", "100"])
        if not self.extended:  # action, mean, total
            header, body = [header[i] for i in (0, 1, 3)], [[r[i] for i in (0, 1, 3)] for r in body[1:]]
        widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
        lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in [header, *body]]
        rule = "-" * len(lines[0])
        more = [f"... {hidden} more action(s), each under {rows[-1][1][1]:.3g} s in total"] if hidden else []
        return os.linesep.join([self._header(), rule, lines[0], rule, *lines[1:], rule, *more])


class AdvancedProfiler(Profiler):
    """Function-level statistics per action with ``cProfile``, reported by ``pstats``.

    Nested actions are attributed to the innermost one (the outer profile pauses meanwhile).

    Args:
        dirpath, filename: Where :meth:`describe` also writes the report (see :class:`Profiler`).
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

    #: what :meth:`terminal_summary` prints: the slowest actions, and the slowest functions of each
    TERMINAL_ACTIONS, TERMINAL_FUNCTIONS = 6, 6

    def summary(self) -> str:
        """``pstats`` output per action (every action, slowest first), sorted by cumulative time."""
        sections = [self._header()]
        for action, prof in self._by_total_time():
            if self.dump_stats:
                os.makedirs(self.dirpath or ".", exist_ok=True)
                prof.dump_stats(os.path.join(self.dirpath or ".", self._prepare_filename(action, ".prof")))
            stream = io.StringIO()
            pstats.Stats(prof, stream=stream).strip_dirs().sort_stats("cumulative").print_stats(
                self.line_count_restriction
            )
            sections += [f"Profile stats for: {action}", stream.getvalue()]
        return os.linesep.join(sections) if len(sections) > 1 else ""

    def terminal_summary(self) -> str:
        """The :data:`TERMINAL_ACTIONS` slowest actions, each with its :data:`TERMINAL_FUNCTIONS` functions of
        largest cumulative time, one line each."""
        ranked = self._by_total_time()
        if not ranked:
            return ""
        shown = ranked[: self.TERMINAL_ACTIONS]
        lines = [f"{self._header()} (cProfile): the {len(shown)} slowest of {len(ranked)} actions, "
                 f"top {self.TERMINAL_FUNCTIONS} functions each by cumulative time"]
        for action, prof in shown:
            stats = pstats.Stats(prof).strip_dirs().sort_stats("cumulative")
            lines += ["", f"{_cut(action, 90)}: {stats.total_tt:.4g} s in {stats.total_calls} calls",  # type: ignore[attr-defined]
                      f"{'calls':>9} {'cumulative s':>13}  function"]
            table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
            for func in stats.fcn_list[: self.TERMINAL_FUNCTIONS]:  # type: ignore[attr-defined]
                _, calls, _, cumulative, _ = table[func]
                lines.append(f"{calls:>9} {cumulative:>13.4f}  {_cut(_function(func), 80)}")
        if len(ranked) > len(shown):
            lines += ["", f"... {len(ranked) - len(shown)} more action(s)"]
        return os.linesep.join(lines)

    def _by_total_time(self) -> list[tuple[str, cProfile.Profile]]:
        totals = {a: pstats.Stats(p).total_tt for a, p in self.profiled_actions.items()}  # type: ignore[attr-defined]
        return sorted(self.profiled_actions.items(), key=lambda item: totals[item[0]], reverse=True)

    def teardown(self, stage: str | None) -> None:
        """Stop any running profile."""
        for action in self._active:
            self.profiled_actions[action].disable()
        self._active.clear()


class PyTorchProfiler(Profiler):
    r"""Operator-level CPU/CUDA profile with ``torch.profiler``, plus a Chrome trace.

    Starts with the first action; each action becomes a ``record_function`` range ``[ember]<action>``. When
    it stops (:meth:`summary`, :meth:`describe`, :meth:`teardown`) the trace goes to ``dirpath/*.pt.trace.json``
    (open in https://ui.perfetto.dev). With a ``schedule``, ``*_step`` actions step it; each cycle writes a trace.

    Args:
        dirpath, filename: Where traces and the report go (see :class:`Profiler`).
        record_shapes, profile_memory, with_stack, \**profiler_kwargs: Passed to ``torch.profiler.profile``.
        schedule: A ``torch.profiler.schedule(...)`` to profile only some steps of long runs.
        export_to_chrome, row_limit: Write the Chrome trace JSON; rows in the summary table (``-1``: all).
        sort_by_key: Summary sort column; default ``cuda_time_total`` if CUDA is profiled, else ``cpu_time_total``.
        group_by_input_shapes: Group the summary by input shapes (needs ``record_shapes``).

    Example:
        >>> import tempfile, torch
        >>> from ember.profilers import PyTorchProfiler
        >>> profiler = PyTorchProfiler(dirpath=tempfile.mkdtemp())
        >>> with profiler.profile("training_step"): _ = torch.ones(8, 8) @ torch.ones(8, 8)
        >>> "aten::mm" in profiler.summary()
        True
    """

    STEP_FUNCTIONS = ("training_step", "validation_step", "test_step", "predict_step")
    AVAILABLE_SORT_KEYS = tuple(  # what EventList.table(sort_by=...) accepts
        "count cpu_time cuda_time device_time cpu_time_total cuda_time_total device_time_total "  # noqa: SIM905
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
        keys = self.AVAILABLE_SORT_KEYS
        if sort_by_key is not None and sort_by_key not in keys:
            hint = did_you_mean(sort_by_key, keys)
            raise ValueError(f"Invalid sort_by_key={sort_by_key!r}; valid keys: {', '.join(keys)}.{hint}")
        if schedule is not None and not callable(schedule):
            raise TypeError(f"schedule must be a callable (torch.profiler.schedule(...)), not {schedule!r}.")
        kw = {"record_shapes": record_shapes, "profile_memory": profile_memory, "with_stack": with_stack}
        self._kwargs: dict[str, Any] = {**profiler_kwargs, **kw}
        self._schedule, self._export_to_chrome = schedule, export_to_chrome
        self._row_limit, self._sort_by_key = row_limit, sort_by_key
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

        kwargs: dict[str, Any] = dict(self._kwargs)
        cuda = [ProfilerActivity.CUDA] if torch.cuda.is_available() else []
        kwargs["activities"] = kwargs.get("activities") or [ProfilerActivity.CPU, *cuda]
        if self._sort_by_key is None:
            on_gpu = ProfilerActivity.CUDA in kwargs["activities"]
            self._sort_by_key = "cuda_time_total" if on_gpu else "cpu_time_total"
        if self._schedule is not None:
            kwargs.update(schedule=self._schedule, on_trace_ready=self._on_trace_ready)
        self.profiler = torch.profiler.profile(**kwargs)
        self.profiler.__enter__()  # type: ignore[no-untyped-call]

    def _on_trace_ready(self, prof: torch.profiler.profile) -> None:
        self._averages = prof.key_averages(group_by_input_shape=self._group_by_input_shapes)
        if self._export_to_chrome and self.dirpath is None:
            warnings.warn("PyTorchProfiler has no dirpath, so no Chrome trace was written.", stacklevel=2)
        elif self._export_to_chrome and self.dirpath is not None:
            suffix = f"-step{prof.step_num}" if self._schedule is not None else ""
            path = os.path.join(self.dirpath, self._prepare_filename(extension=f"{suffix}.pt.trace.json"))
            os.makedirs(self.dirpath, exist_ok=True)
            prof.export_chrome_trace(path)
            self.trace_paths.append(path)

    def teardown(self, stage: str | None) -> None:
        """Stop the profiler (writing the trace) if it is still running."""
        for scope in reversed(list(self._ranges.values())):
            scope.__exit__(None, None, None)
        self._ranges.clear()
        prof, self.profiler = self.profiler, None
        if prof is not None:
            prof.__exit__(None, None, None)  # type: ignore[no-untyped-call]
            if self._schedule is None:
                self._on_trace_ready(prof)

    def summary(self) -> str:
        """Stop the profiler (writing the trace) and return the ``key_averages`` table."""
        self.teardown(self._stage)
        if not self._averages:
            return ""
        table = self._averages.table(sort_by=self._sort_by_key, row_limit=self._row_limit)
        return self._header() + os.linesep + str(table)


def _function(func: tuple[str, int, str]) -> str:
    """``file:line(name)`` as pstats prints it (``{name}`` for built-ins)."""
    filename, line, name = func
    return f"{{{name}}}" if filename == "~" and line == 0 else f"{filename}:{line}({name})"


def _cut(text: str, width: int | None) -> str:
    """``text`` shortened to ``width`` characters with a "..." in the middle (None: unchanged)."""
    if width is None or len(text) <= width:
        return text
    keep = width - 3
    return text[: keep - keep // 2] + "..." + text[len(text) - keep // 2:]


def resolve_profiler(value: str | Profiler | None) -> Profiler:
    """The Trainer's ``profiler=``: ``None`` -> pass-through, ``"simple"``/``"advanced"``/``"pytorch"``, or a Profiler.

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
    profilers: dict[str, type[Profiler]] = {"simple": SimpleProfiler, "advanced": AdvancedProfiler}
    profilers["pytorch"] = PyTorchProfiler
    cls = profilers.get(value.strip().lower())
    if cls is None:
        valid = ", ".join(repr(name) for name in profilers)
        hint = did_you_mean(value.strip().lower(), profilers)
        raise ValueError(f"Unknown profiler {value!r}. Valid names: {valid} (or a Profiler, or None).{hint}")
    return cls()
