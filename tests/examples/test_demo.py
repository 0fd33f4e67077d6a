"""`make demo`'s script: trains, logs CSV, keeps the last two checkpoints, and a second run resumes from them."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _demo(tmp_path: Path, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py"), "--project-dir", str(tmp_path / "demo"), *args],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out.stdout


def test_demo_trains_logs_checkpoints_and_resumes(tmp_path: Path) -> None:
    first = _demo(tmp_path, "--epochs", "3")
    assert "epoch 2: val_loss" in first and "sample: It was the" in first
    checkpoints = sorted(p.name for p in (tmp_path / "demo" / "checkpoints").iterdir())
    assert checkpoints == ["latest", "step-00000080", "step-00000120"]  # keep_last=2, newest committed
    rows = list(csv.DictReader((tmp_path / "demo" / "logs" / "demo" / "version_0" / "metrics.csv").open()))
    val = [float(r["val_loss"]) for r in rows if r.get("val_loss")]
    assert len(val) == 3 and val[-1] < val[0]  # it learns
    # lose the newest checkpoint (as if the run died during epoch 2): the rerun resumes from step 80 and
    # retrains epoch 2 to exactly the same validation loss
    import shutil

    shutil.rmtree(tmp_path / "demo" / "checkpoints" / "step-00000120")
    second = _demo(tmp_path, "--epochs", "3")
    assert "resumed from" in second and "step-00000080 (epoch 2, step 80)" in second
    assert "epoch 1: val_loss" not in second
    line = next(x for x in second.splitlines() if x.startswith("epoch 2: val_loss"))
    assert float(line.split()[3].rstrip(";")) == round(val[-1], 3)
    # the logs continue in the same run: no second version, epoch 2's rows replaced, not duplicated
    assert sorted(p.name for p in (tmp_path / "demo" / "logs" / "demo").iterdir()) == ["version_0"]
    rows = list(csv.DictReader((tmp_path / "demo" / "logs" / "demo" / "version_0" / "metrics.csv").open()))
    resumed_val = [float(r["val_loss"]) for r in rows if r.get("val_loss")]
    assert resumed_val == val
