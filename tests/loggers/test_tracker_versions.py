"""Accelerate's ``log_with=[...]`` with several local trackers: one run is one ``version_N`` folder."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from ember import Accelerator


def one_run(project_dir: Path, losses: list[float]) -> None:
    accelerator = Accelerator(cpu=True, verbose=False, log_with=["csv", "tensorboard"], project_dir=project_dir)
    accelerator.init_trackers("demo", config={"lr": 0.1, "batch_size": 8})
    for step, loss in enumerate(losses):
        accelerator.log({"train_loss": loss}, step=step)
    accelerator.end_training()


def test_csv_and_tensorboard_share_one_version_per_run(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    one_run(tmp_path, [1.0, 0.5])
    root = tmp_path / "logs" / "demo"
    assert sorted(p.name for p in root.iterdir()) == ["version_0"]
    run = root / "version_0"
    assert any(p.name.startswith("events.out.tfevents") for p in run.iterdir())
    with open(run / "metrics.csv", newline="") as f:
        assert [float(r["train_loss"]) for r in csv.DictReader(f)] == [1.0, 0.5]
    assert yaml.safe_load((run / "hparams.yaml").read_text()) == {"lr": 0.1, "batch_size": 8}
    one_run(tmp_path, [2.0])  # the next run: the next version, for both trackers
    assert sorted(p.name for p in root.iterdir()) == ["version_0", "version_1"]
    with open(root / "version_1" / "metrics.csv", newline="") as f:
        assert [float(r["train_loss"]) for r in csv.DictReader(f)] == [2.0]
    assert any(p.name.startswith("events.out.tfevents") for p in (root / "version_1").iterdir())
