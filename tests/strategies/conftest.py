"""DeepSpeed tests: skipped (with the reason) where DeepSpeed is not installed.

DeepSpeed JIT-compiles one small C++ op with g++ the first time a process group starts on the CPU. The compiled op
is cached in ``<venv>/torch-extensions`` (``make test`` builds it once while installing), so every launch of the
session reuses it instead of compiling for a minute or more.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
SKIP_REASON = "DeepSpeed is not installed (pip install --no-build-isolation 'ember[deepspeed]', after torch)"
WORKERS = Path(__file__).parent / "_workers"
EMBER = [sys.executable, "-m", "ember.cli"]
_LAUNCH_VARS = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "NODE_RANK", "MASTER_ADDR",
                "MASTER_PORT", "SLURM_NTASKS", "SLURM_PROCID"}


def extensions_dir() -> Path:
    """Where DeepSpeed's compiled op is cached: beside the virtual environment, shared by every test run."""
    return Path(sys.prefix) / "torch-extensions"


@pytest.fixture(scope="session", autouse=True)
def deepspeed_env() -> None:
    """Children run DeepSpeed on the CPU and reuse the compiled op (inherited through the environment)."""
    if HAS_DEEPSPEED:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(extensions_dir()))


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in _LAUNCH_VARS and not k.startswith(("EMBER_", "TORCHELASTIC_"))}
    env["OMP_NUM_THREADS"] = "1"
    env["CUDA_VISIBLE_DEVICES"] = ""  # these tests mean the CPU (gloo), also on a GPU machine
    return env


def run(cmd: list[Any], timeout: float = 300, env: dict[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(c) for c in cmd], env={**clean_env(), **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"{cmd} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="session")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One 2-process launch of ``_workers/ds_worker.py`` for the whole session (see its docstring)."""
    if not HAS_DEEPSPEED:
        pytest.skip(SKIP_REASON)
    out = tmp_path_factory.mktemp("deepspeed-2-ranks")
    run([*EMBER, "launch", "--cpu", "--num_processes", "2", WORKERS / "ds_worker.py", out], timeout=600)
    from types import SimpleNamespace

    return SimpleNamespace(
        out=out,
        results=[json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)],
        weights=[load_file(out / f"rank{r}.safetensors") for r in (0, 1)],
    )


def weights_of(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


@pytest.fixture(scope="session")
def ds() -> Any:
    """The helpers above, for test modules (conftest is not importable under --import-mode=importlib)."""
    from types import SimpleNamespace

    return SimpleNamespace(run=run, EMBER=EMBER, WORKERS=WORKERS, weights_of=weights_of, clean_env=clean_env,
                           SKIP_REASON=SKIP_REASON, HAS_DEEPSPEED=HAS_DEEPSPEED)
