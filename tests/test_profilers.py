"""Profilers report what ran, and the PyTorch profiler writes a real Chrome trace."""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

import pytest
import torch

from ember.profilers import (
    AdvancedProfiler,
    PassThroughProfiler,
    Profiler,
    PyTorchProfiler,
    SimpleProfiler,
    resolve_profiler,
)


def _rows(table: str) -> dict[str, list[str]]:
    """Cells of each ``| action | ... |`` row, keyed by action."""
    rows = {}
    for line in table.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def test_simple_profiler_table_counts_calls() -> None:
    profiler = SimpleProfiler()
    for _ in range(3):
        with profiler.profile("training_step"):
            sum(range(1000))
    with profiler.profile("validation_step"):
        pass
    rows = _rows(profiler.summary())
    assert rows["Action"] == ["Mean duration (s)", "Num calls", "Total time (s)", "Percentage %"]
    assert rows["training_step"][1] == "3"
    assert rows["validation_step"][1] == "1"
    assert rows["Total"][1] == "4"
    mean, _, total, percent = (float(x) for x in rows["training_step"])
    assert total == pytest.approx(3 * mean, rel=1e-3)
    assert 0 < percent <= 100


def test_simple_profiler_short_table_and_errors() -> None:
    profiler = SimpleProfiler(extended=False)
    assert profiler.summary() == ""
    with profiler.profile("a"):
        pass
    rows = _rows(profiler.summary())
    assert rows["Action"] == ["Mean duration (s)", "Total time (s)"]
    assert set(rows) == {"Action", "a"}
    profiler.start("b")
    with pytest.raises(ValueError, match="already started"):
        profiler.start("b")
    with pytest.raises(ValueError, match="never started"):
        profiler.stop("c")


def test_describe_prints_and_writes_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    profiler = SimpleProfiler(filename="perf")
    profiler.setup("fit", local_rank=0, log_dir=str(tmp_path))
    with profiler.profile("training_step"):
        pass
    profiler.describe()
    profiler.teardown("fit")
    text = (tmp_path / "fit-perf-0.txt").read_text()
    assert text.startswith("FIT Profiler Report")
    assert "training_step" in text
    assert "training_step" in capsys.readouterr().out

    quiet = SimpleProfiler(dirpath=tmp_path, filename="perf")
    quiet.setup("fit", local_rank=1)
    with quiet.profile("x"):
        pass
    quiet.describe()
    assert capsys.readouterr().out == ""  # only local rank 0 prints
    assert "x" in _rows((tmp_path / "fit-perf-1.txt").read_text())


def _work() -> list[int]:
    return sorted(range(5000), key=lambda x: -x)


def test_advanced_profiler_pstats_per_action(tmp_path: Path) -> None:
    profiler = AdvancedProfiler(dirpath=tmp_path, line_count_restriction=10, dump_stats=True)
    with profiler.profile("outer"):
        with profiler.profile("inner"):
            _work()
        sum(range(10))
    text = profiler.summary()
    assert "Profile stats for: outer" in text and "Profile stats for: inner" in text
    assert "Ordered by: cumulative time" in text
    inner = text.split("Profile stats for: inner")[1]
    outer = text.split("Profile stats for: outer")[1].split("Profile stats for: inner")[0]
    assert "_work" in inner  # nested work is attributed to the innermost action
    assert "_work" not in outer
    assert sorted(p.name for p in tmp_path.glob("*.prof")) == ["inner.prof", "outer.prof"]
    profiler.teardown(None)


def test_pytorch_profiler_writes_chrome_trace(tmp_path: Path) -> None:
    profiler = PyTorchProfiler(dirpath=tmp_path, record_shapes=True)
    model = torch.nn.Linear(8, 4)
    for _ in range(2):
        with profiler.profile("training_step"):
            model(torch.randn(2, 8)).sum().backward()
    text = profiler.summary()
    assert "[ember]training_step" in text
    assert "aten::addmm" in text
    (trace,) = profiler.trace_paths
    assert Path(trace).parent == tmp_path and trace.endswith(".pt.trace.json")
    data = json.loads(Path(trace).read_text())
    names = [event.get("name") for event in data["traceEvents"]]
    assert names.count("[ember]training_step") == 2
    assert profiler.summary() == text  # stopping again is harmless and writes no second trace
    assert len(profiler.trace_paths) == 1


@pytest.mark.filterwarnings("ignore:.*Profiler clears events at the end of each cycle")
def test_pytorch_profiler_schedule_writes_one_trace_per_cycle(tmp_path: Path) -> None:
    schedule = torch.profiler.schedule(wait=1, warmup=1, active=2, repeat=2)
    profiler = PyTorchProfiler(dirpath=tmp_path, schedule=schedule)
    profiler.setup("fit", local_rank=0)
    for _ in range(8):
        with profiler.profile("run_training_batch"), profiler.profile("training_step"):
            torch.ones(4, 4) @ torch.ones(4, 4)
    profiler.teardown("fit")
    files = sorted(p.name for p in tmp_path.glob("*.pt.trace.json"))
    assert len(files) == 2
    assert all(re.fullmatch(r"fit-0-step\d+\.pt\.trace\.json", f) for f in files)
    for name in files:
        assert "traceEvents" in json.loads((tmp_path / name).read_text())


def test_pytorch_profiler_argument_errors() -> None:
    with pytest.raises(ValueError, match="Did you mean 'cpu_time_total'"):
        PyTorchProfiler(sort_by_key="cpu_time_totl")
    with pytest.raises(TypeError, match="schedule must be a callable"):
        PyTorchProfiler(schedule=3)  # type: ignore[arg-type]


def test_pytorch_profiler_without_dirpath_warns() -> None:
    profiler = PyTorchProfiler()
    with profiler.profile("a"):
        torch.ones(2) + 1
    with pytest.warns(UserWarning, match="no dirpath"):
        assert "[ember]a" in profiler.summary()


def test_passthrough_is_a_null_context() -> None:
    profiler = PassThroughProfiler()
    scope = profiler.profile("x")
    assert isinstance(scope, contextlib.nullcontext)
    with scope as name:
        assert name == "x"
    assert profiler.summary() == ""
    profiler.describe()


def test_resolve_profiler() -> None:
    assert isinstance(resolve_profiler(None), PassThroughProfiler)
    assert isinstance(resolve_profiler("simple"), SimpleProfiler)
    assert isinstance(resolve_profiler(" Advanced "), AdvancedProfiler)
    assert isinstance(resolve_profiler("pytorch"), PyTorchProfiler)
    mine = SimpleProfiler()
    assert resolve_profiler(mine) is mine
    with pytest.raises(
        ValueError, match=r"Valid names: 'simple', 'advanced', 'pytorch'.*Did you mean 'simple'\?"
    ):
        resolve_profiler("simpel")
    with pytest.raises(TypeError, match="got int"):
        resolve_profiler(3)  # type: ignore[arg-type]
    assert issubclass(PassThroughProfiler, Profiler)
