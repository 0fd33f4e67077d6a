"""Helpers for the core tests: start real processes (python / torchrun / ember launch) and read their results."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

WORKERS = Path(__file__).parent / "_workers"
WORKER = WORKERS / "core_worker.py"
EMBER = [sys.executable, "-m", "ember.cli"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]

_LAUNCH_VARS = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "NODE_RANK", "MASTER_ADDR",
                "MASTER_PORT", "SLURM_NTASKS", "SLURM_PROCID"}


def clean_env() -> dict[str, str]:
    """The test process's environment without any launcher variables (so children start as fresh jobs)."""
    env = {k: v for k, v in os.environ.items()
           if k not in _LAUNCH_VARS and not k.startswith(("EMBER_", "TORCHELASTIC_"))}
    env["OMP_NUM_THREADS"] = "1"
    env["CUDA_VISIBLE_DEVICES"] = ""  # these tests mean the CPU (gloo), also on a GPU machine
    return env


def run(cmd: list[Any], timeout: float = 180, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``; fail the test with its output if it exits non-zero."""
    proc = subprocess.run([str(c) for c in cmd], env=clean_env(), capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)
    if proc.returncode != 0:
        pytest.fail(f"{cmd} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}")
    return proc


def popen(cmd: list[Any]) -> subprocess.Popen[str]:
    return subprocess.Popen([str(c) for c in cmd], env=clean_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def read_ranks(out: Path, world: int) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """[(json results, tensors)] of each rank, in rank order."""
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted([f"rank{r}.{ext}" for r in range(world) for ext in ("json", "pt")]), files
    return [(json.loads((out / f"rank{r}.json").read_text()), torch.load(out / f"rank{r}.pt"))
            for r in range(world)]


@pytest.fixture(scope="session")
def common() -> ModuleType:
    """tests/core/_workers/common.py: data, model and plain-PyTorch references."""
    spec = importlib.util.spec_from_file_location("ember_core_tests_common", WORKERS / "common.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_params_close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], **tol: float) -> None:
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], **(tol or {"rtol": 1e-5, "atol": 1e-6}), msg=k)


def params_differ(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-4) -> bool:
    return any(not torch.allclose(a[k], b[k], atol=atol) for k in a)


@pytest.fixture(scope="session")
def tools() -> Any:
    """The helpers above, for test modules (conftest is not importable under --import-mode=importlib)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        WORKER=WORKER, EMBER=EMBER, TORCHRUN=TORCHRUN, run=run, popen=popen, read_ranks=read_ranks,
        assert_params_close=assert_params_close, params_differ=params_differ, clean_env=clean_env,
    )
