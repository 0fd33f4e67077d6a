"""The seed document's DeepSpeed snippets of both layers run on ember with only the import changed, on 2 processes
(CPU, gloo): ``Accelerator(deepspeed_plugin=DeepSpeedPlugin(zero_stage=2, gradient_accumulation_steps=4))`` and
``L.Trainer(strategy="deepspeed_stage_2")``."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                reason="DeepSpeed is not installed (pip install --no-build-isolation 'ember[deepspeed]')")


def _launch(script: str, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EMBER_", "TORCHELASTIC_"))}
    # DeepSpeed on the CPU, reusing the op compiled once into the environment's cache (see tests/strategies)
    env.update(OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", CUDA_VISIBLE_DEVICES="")  # the CPU, also on a GPU box
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch-extensions"))
    cmd = [sys.executable, "-m", "ember.cli", "launch", "--cpu", "--num_processes", "2", str(ROOT / "examples" / script)]
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=280, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return out.stdout


@pytest.mark.timeout(300)
def test_seed_accelerate_deepspeed_plugin(tmp_path: Path) -> None:
    stdout = _launch("seed_deepspeed_accelerate.py", tmp_path)
    # 256 windows / batch 8 / 2 ranks = 16 micro-batches per rank and epoch; 4 per step (the plugin's
    # gradient_accumulation_steps became the Accelerator's) -> 4 optimizer steps per epoch, 2 epochs
    line = next(x for x in stdout.splitlines() if x.startswith("distributed:"))
    assert "distributed: DEEPSPEED, ZeRO stage: 2, accumulation: 4, optimizer steps: 8" in line
    first, last = (float(v) for v in line.rsplit("loss: ", 1)[1].split(" -> "))
    assert last < 0.5 * first  # it learns
    checkpoint = tmp_path / "checkpoint"
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    assert manifest["strategy"] == "deepspeed" and manifest["world_size"] == 2 and manifest["step"] == 8
    assert {f"optimizer.zero-rank{r}.safetensors" for r in (0, 1)} <= set(manifest["files"])


@pytest.mark.timeout(300)
def test_seed_lightning_deepspeed_stage_2(tmp_path: Path) -> None:
    stdout = _launch("seed_deepspeed_trainer.py", tmp_path)
    line = next(x for x in stdout.splitlines() if x.startswith("strategy:"))
    # 16 batches per rank and epoch, 2 epochs, one optimizer step each
    assert "strategy: DeepSpeedStrategy(stage=2, device=cpu), optimizer steps: 32" in line
    assert float(line.rsplit("train_loss: ", 1)[1]) < 0.5
    checkpoints = list(tmp_path.glob("runs/**/checkpoints/*/manifest.json"))
    assert len(checkpoints) == 1, list(tmp_path.rglob("*"))[:30]
    files = set(json.loads(checkpoints[0].read_text())["files"])
    assert {"optimizer.zero-rank0.json", "optimizer.zero-rank1.json", "model.safetensors", "trainer.json"} <= files
