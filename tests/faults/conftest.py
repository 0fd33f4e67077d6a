"""Helpers for the fault tests: run tests/faults/_workers/fault_worker.py on 1 process (plain python) or on 2
(`ember launch`), rerun it after crashes, compare a run with the never-killed reference of the same config.

Every test here uses the same worker; ``layer`` selects the Accelerator loop or (later) the Trainer variant of the
same run, so a Trainer test is the Accelerator test with ``layer="trainer"``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

WORKER = Path(__file__).parent / "_workers" / "fault_worker.py"
_LAUNCH_VARS = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "NODE_RANK", "MASTER_ADDR",
                "MASTER_PORT", "SLURM_NTASKS", "SLURM_PROCID"}
#: the run's shape per world size (2 ranks see half the batches per epoch, so they save every step)
CONFIG: dict[int, list[str]] = {1: [], 2: ["--save-every", "1"]}


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in _LAUNCH_VARS and not k.startswith(("EMBER_", "TORCHELASTIC_"))}
    env["OMP_NUM_THREADS"] = "1"
    env["CUDA_VISIBLE_DEVICES"] = ""  # these tests mean the CPU (gloo), also on a GPU machine
    return env


@dataclass
class Result:
    returncode: int
    output: str
    seconds: float


def command(out: Path, world: int, *flags: Any, layer: str = "accelerator", launch: tuple[str, ...] = ()) -> list[str]:
    worker = [str(WORKER), str(out), "--layer", layer, *CONFIG[world], *(str(f) for f in flags)]
    if world == 1 and not launch:
        return [sys.executable, *worker]
    return [sys.executable, "-m", "ember.cli", "launch", "--num_processes", str(world), "--cpu", *launch, *worker]


def run_worker(out: Path, world: int, *flags: Any, layer: str = "accelerator", launch: tuple[str, ...] = (),
               timeout: float = 120) -> Result:
    """Run the worker once (no check of its exit status)."""
    start = time.monotonic()
    proc = subprocess.run(command(out, world, *flags, layer=layer, launch=launch), env=clean_env(),
                          capture_output=True, text=True, timeout=timeout)
    return Result(proc.returncode, proc.stdout + proc.stderr, time.monotonic() - start)


def describe(result: Result) -> str:
    return f"exit {result.returncode} after {result.seconds:.1f}s\n{result.output[-6000:]}"


def run_until_done(out: Path, world: int, *flags: Any, layer: str = "accelerator", max_runs: int = 10,
                   after_crash: Callable[[Result], None] | None = None) -> list[Result]:
    """Rerun the same command until it finishes (the worker auto-resumes); returns every run's result."""
    results = []
    for _ in range(max_runs):
        result = run_worker(out, world, *flags, layer=layer)
        results.append(result)
        if result.returncode == 0:
            return results
        assert (out / "markers").exists() and any((out / "markers").iterdir()), describe(result)
        if after_crash is not None:
            after_crash(result)
    pytest.fail(f"no clean finish after {max_runs} runs; last: {describe(results[-1])}")


@dataclass
class Outcome:
    """What a finished run left: per-rank final parameters, loss history and counters."""

    params: list[dict[str, torch.Tensor]] = field(default_factory=list)
    losses: list[str] = field(default_factory=list)
    results: list[str] = field(default_factory=list)


def outcome(out: Path, world: int) -> Outcome:
    got = Outcome()
    for r in range(world):
        got.params.append(load_file(out / f"final-rank{r}.safetensors"))
        got.losses.append((out / f"losses-rank{r}.txt").read_text())
        got.results.append((out / f"result-rank{r}.json").read_text())
    return got


def assert_identical(got: Outcome, want: Outcome) -> None:
    """Bit-identical parameters, loss history (float.hex per micro-batch) and step counters on every rank."""
    for r, (g, w) in enumerate(zip(got.losses, want.losses)):
        assert g == w, f"rank {r}: loss history differs\n--- got\n{g}\n--- want\n{w}"
    assert got.results == want.results
    for r, (g, w) in enumerate(zip(got.params, want.params)):
        assert g.keys() == w.keys()
        for k in w:
            assert torch.equal(g[k], w[k]), f"rank {r}: parameter {k} differs"


class References:
    """Never-killed runs, computed once per (world, layer) for the whole session."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cache: dict[tuple[int, str], Outcome] = {}

    def dir(self, world: int, layer: str = "accelerator") -> Path:
        """The reference run's output directory (its checkpoints are under ``checkpoints/``)."""
        self.get(world, layer)
        return self.root / f"reference-w{world}-{layer}"

    def get(self, world: int, layer: str = "accelerator") -> Outcome:
        key = (world, layer)
        if key not in self.cache:
            out = self.root / f"reference-w{world}-{layer}"
            result = run_worker(out, world, layer=layer)
            assert result.returncode == 0, describe(result)
            self.cache[key] = outcome(out, world)
        return self.cache[key]


@pytest.fixture(scope="session")
def references(tmp_path_factory: pytest.TempPathFactory) -> References:
    return References(tmp_path_factory.mktemp("fault-references"))


@pytest.fixture(scope="session")
def fw() -> Any:
    """The helpers above, for test modules (conftest is not importable under --import-mode=importlib)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        run_worker=run_worker, run_until_done=run_until_done, outcome=outcome, assert_identical=assert_identical,
        describe=describe, command=command, clean_env=clean_env, WORKER=WORKER,
    )
