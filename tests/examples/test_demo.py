"""`make demo` (examples/demo.py, the Trainer): it learns, logs, checkpoints, reports, says what to do next, and a
second run resumes from the newest checkpoint and says so. ``--small`` keeps it to seconds."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _demo(tmp_path: Path, *args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py"), "--root", str(tmp_path / "demo"), "--small", *args],
        capture_output=True, text=True, timeout=240, cwd=tmp_path, env=env,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-4000:]
    return out.stdout


def _val_losses(run: Path) -> list[float]:
    with open(run / "logs" / "csv" / "version_0" / "metrics.csv", newline="") as f:
        return [float(r["val_loss"]) for r in csv.DictReader(f) if r.get("val_loss")]


def test_demo_learns_logs_reports_and_resumes(tmp_path: Path) -> None:
    run = tmp_path / "demo"
    first = _demo(tmp_path, "--epochs", "3")
    assert "a new run in" in first and "resuming" not in first
    # progress: loss, tokens/s and time left on every epoch line
    epoch_lines = [x for x in first.splitlines() if x.startswith("Epoch ")]
    assert len(epoch_lines) == 3 and all("tok/s" in x and "loss=" in x and " left" in x for x in epoch_lines)

    summary = json.loads((run / "demo.json").read_text())
    assert math.isclose(summary["untrained_val_loss"], math.log(256), rel_tol=0.05)  # uniform over bytes
    assert summary["best_val_loss"] < summary["untrained_val_loss"] - 1.5  # clearly learned something
    val = _val_losses(run)
    assert len(val) == 3 and val[-1] < val[0]
    assert math.isclose(min(val), summary["best_val_loss"], rel_tol=1e-6)  # the best checkpoint's score

    # ModelCheckpoint (best by val_loss + last), CSV + TensorBoard logs, samples, report, run info
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir())
    assert "last" in ckpts and any(n.startswith("epoch=2-step=45-val_loss=") for n in ckpts)
    assert list((run / "logs" / "tensorboard" / "version_0").glob("events.out.tfevents.*"))
    header = (run / "logs" / "csv" / "version_0" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train_loss", "val_loss", "lr-AdamW/pg1", "train/tokens_per_sec", "memory/peak_rss_mb"} <= set(header)
    samples = (run / "samples.txt").read_text(encoding="utf-8")
    assert samples.startswith("def ") and "class " in samples and len(samples) > 400
    page = (run / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 5
    # the closing message: where everything is and the exact next commands
    for expected in ("Everything is in", "metrics.csv", "report.html", "--fresh", "tensorboard --logdir",
                     "ember launch --num_processes 4", "--accelerator gpu", "demo_accelerator.py", "ember report"):
        assert expected in first, expected

    # a second run resumes from the newest checkpoint, says so, and trains only the missing epoch
    second = _demo(tmp_path, "--epochs", "4")
    assert "resuming from the newest checkpoint" in second and "(step 45, 3 epoch(s) done)" in second
    assert [x.split(":")[0] for x in second.splitlines() if x.startswith("Epoch ")] == ["Epoch 3/3"]
    assert len(_val_losses(run)) == 4  # the same CSV run continues: no second version
    assert sorted(p.name for p in (run / "logs" / "csv").iterdir()) == ["version_0"]
    info = json.loads((run / "run_info.json").read_text())
    assert len(info["sessions"]) == 2 and all("end" in s for s in info["sessions"])

    # a finished run: nothing to train, and it says how to go on
    third = _demo(tmp_path, "--epochs", "4", "--no-report")
    assert "already finished its 4 epochs" in third and "--epochs 8" in third
    assert not [x for x in third.splitlines() if x.startswith("Epoch ")]


def test_time_budget_stops_at_an_epoch_end_and_the_rerun_trains_on(tmp_path: Path) -> None:
    first = _demo(tmp_path, "--epochs", "3", "--time-budget", "0.001", "--no-report")
    assert "Stopped after 1 of 3 epochs to stay within --time-budget" in first
    assert len(_val_losses(tmp_path / "demo")) == 1
    second = _demo(tmp_path, "--epochs", "3", "--time-budget", "0", "--no-report")
    assert "(step 15, 1 epoch(s) done)" in second and "Stopped" not in second
    assert len(_val_losses(tmp_path / "demo")) == 3
