"""The seed document's Accelerate snippets run on ember with only the import changed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "seed_accelerate.py"

pytest.importorskip("transformers", reason="the seed example builds a tiny transformers GPT-2")


def _run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": ""}  # the test means the CPU, also on a GPU machine
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=240, env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out.stdout


def test_seed_accelerate_loop_single_process(tmp_path: Path) -> None:
    stdout = _run([sys.executable, str(SCRIPT)], tmp_path)
    # 64 samples / batch 8 = 8 micro-batches per epoch, accumulation 4 → 2 optimizer steps per epoch, 2 epochs
    assert "optimizer steps: 4" in stdout
    manifest = json.loads((tmp_path / "checkpoint" / "manifest.json").read_text())
    assert manifest["step"] == 4 and manifest["world_size"] == 1 and manifest["precision"] == "bf16-mixed"
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())


@pytest.mark.timeout(300)
def test_seed_accelerate_loop_two_processes_from_the_launch_yaml(tmp_path: Path) -> None:
    """The seed's YAML + `launch --config_file` pair: 2 CPU processes and bf16 come from the file."""
    config = ROOT / "examples" / "accelerate_config.yaml"
    stdout = _run([sys.executable, "-m", "ember.cli", "launch", "--config_file", str(config), str(SCRIPT)], tmp_path)
    # 8 batches shared by 2 ranks = 4 each → 1 optimizer step per epoch; the scheduler steps once per step
    assert "optimizer steps: 2" in stdout
    assert stdout.count("optimizer steps:") == 1  # accelerator.print: main process only
    manifest = json.loads((tmp_path / "checkpoint" / "manifest.json").read_text())
    assert manifest["world_size"] == 2
    assert (tmp_path / "checkpoint" / "state-rank1.json").exists()
