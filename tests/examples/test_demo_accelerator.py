"""The demo's job on the core layer (examples/demo_accelerator.py): trains, logs CSV + TensorBoard, keeps the last two
checkpoints, and a rerun resumes exactly; one epoch samples text without crashing (byte-level decoding)."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _demo(tmp_path: Path, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo_accelerator.py"), "--project-dir", str(tmp_path / "demo"),
         "--small", *args],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out.stdout


def _val(tmp_path: Path) -> list[float]:
    with open(tmp_path / "demo" / "logs" / "demo" / "version_0" / "metrics.csv", newline="") as f:
        return [float(r["val_loss"]) for r in csv.DictReader(f) if r.get("val_loss")]


def test_one_epoch_samples_text(tmp_path: Path) -> None:
    out = _demo(tmp_path, "--epochs", "1")
    sample = out.split("sample: ", 1)[1].split("untrained validation loss")[0]
    assert sample.startswith("def ") and len(sample) > 100  # 120 sampled bytes; any id decodes


def test_demo_accelerator_trains_and_resumes_exactly(tmp_path: Path) -> None:
    first = _demo(tmp_path, "--epochs", "3")
    untrained = float(re.findall(r"untrained validation loss (\d+\.\d+)", first)[-1])
    checkpoints = sorted(p.name for p in (tmp_path / "demo" / "checkpoints").iterdir())
    assert checkpoints == ["latest", "step-00000030", "step-00000045"]  # keep_last=2, newest committed
    val = _val(tmp_path)
    assert len(val) == 3 and val[-1] < val[0] and val[-1] < untrained - 1.5
    assert list((tmp_path / "demo" / "logs" / "tensorboard" / "version_0").glob("events.out.tfevents.*"))
    # lose the newest checkpoint (as if the run died during epoch 2): the rerun resumes from step 30 and
    # retrains epoch 2 to exactly the same validation loss
    shutil.rmtree(tmp_path / "demo" / "checkpoints" / "step-00000045")
    second = _demo(tmp_path, "--epochs", "3")
    assert "resumed from" in second and "step-00000030 (epoch 2, step 30)" in second
    assert "epoch 1: val_loss" not in second
    line = next(x for x in second.splitlines() if x.startswith("epoch 2: val_loss"))
    assert float(line.split()[3].rstrip(";")) == round(val[-1], 3)
    # the logs continue in the same run: no second version, epoch 2's rows replaced, not duplicated
    assert sorted(p.name for p in (tmp_path / "demo" / "logs" / "demo").iterdir()) == ["version_0"]
    assert _val(tmp_path) == val
