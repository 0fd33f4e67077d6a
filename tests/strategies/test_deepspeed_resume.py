"""DeepSpeed ZeRO-2 checkpoints resume exactly: ``kill -9`` mid-epoch on 2 processes and the same command again
finishes bit-identical to the never-killed run (tests/faults' worker and helpers, launched with a DEEPSPEED launch
config); resuming on another world size fails before training, saying what to do."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                reason="DeepSpeed is not installed (pip install --no-build-isolation 'ember[deepspeed]')")

FAULTS = Path(__file__).resolve().parents[1] / "faults"
YAML = "distributed_type: DEEPSPEED\ndeepspeed_config:\n  zero_stage: 2\n"


@pytest.fixture(scope="module")
def faults() -> ModuleType:
    """tests/faults/conftest.py's helpers (run the fault worker, read and compare its outcome)."""
    spec = importlib.util.spec_from_file_location("ember_faults_helpers", FAULTS / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(300)
def test_kill9_mid_epoch_resumes_bit_identical_under_zero2(tmp_path: Path, two_ranks: Any, faults: ModuleType) -> None:
    config = tmp_path / "deepspeed.yaml"
    config.write_text(YAML)
    out = tmp_path / "run"
    # 5 micro-batches per rank and epoch, windows [5-7] [8-9] in epoch 1, a checkpoint after every step: rank 1
    # dies inside the window [8-9], right after the mid-epoch checkpoint of step 3 (micro-batch 7)
    killed = faults.run_worker(out, 2, "--kill", "backward@8:1", launch=("--config_file", str(config)))
    assert killed.returncode != 0 and "SIGKILL at backward@8" in killed.output, faults.describe(killed)
    resumed = faults.run_worker(out, 2, "--kill", "backward@8:1", launch=("--config_file", str(config)))
    assert resumed.returncode == 0, faults.describe(resumed)
    assert "start at step 3 (resumed from" in resumed.output, faults.describe(resumed)
    assert {p.name for p in (out / "checkpoints" / "step-00000003").iterdir()} >= {
        "optimizer.zero-rank0.json", "optimizer.zero-rank1.safetensors", "model.safetensors"}
    reference = two_ranks.out / "fault-reference"  # the same worker under ZeRO-2, never killed
    faults.assert_identical(faults.outcome(out, 2), faults.outcome(reference, 2))


@pytest.mark.timeout(180)
def test_other_world_size_fails_before_training(tmp_path: Path, two_ranks: Any, faults: ModuleType, ds: Any) -> None:
    """The 2-process ZeRO-2 checkpoints of the reference run, resumed by the same script on 1 process."""
    out = tmp_path / "one-rank"
    shutil.copytree(two_ranks.out / "fault-reference" / "checkpoints", out / "checkpoints")
    proc = ds.run([sys.executable, faults.WORKER, out], check=False, timeout=150,
                  env={"EMBER_STRATEGY": "deepspeed", "EMBER_STRATEGY_CONFIG": '{"zero_stage": 2}'})
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "was saved by 2 processes with strategy='deepspeed'; this job has 1" in output, output[-3000:]
    assert "Resume with 2 processes" in output
    assert not (out / "losses-rank0.txt").exists()  # it failed before the first batch
