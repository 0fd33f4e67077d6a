"""Loggers and profilers through the Trainer: four loggers at once, each read back with its own tool (issue 3,
"Must show" 4), and the "simple" / "advanced" / "pytorch" profilers and a Profiler object on a real fit."""

from __future__ import annotations

import csv
import json
import os
import re
import struct
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from trainer_helpers import Regressor, loader, quiet_trainer

from ember.callbacks import LearningRateMonitor
from ember.profilers import PassThroughProfiler, Profiler, SimpleProfiler

# ------------------------------------------------------------------------------------- four loggers


@pytest.fixture
def tracker_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Offline, silent W&B and a local MLflow store, everything under tmp_path."""
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    pytest.importorskip("tensorboard")
    home = tmp_path / "wandb_home"
    home.mkdir()
    for key in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(key, str(home))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    for key in ("WANDB_PROJECT", "WANDB_RUN_ID", "WANDB_API_KEY", "WANDB_MODE", "MLFLOW_TRACKING_URI",
                "MLFLOW_ALLOW_FILE_STORE"):
        monkeypatch.delenv(key, raising=False)
    return tmp_path


def _wandb_records(run_dir: Path, timeout: float = 20.0) -> list[Any]:
    """Protobuf records of the run's ``.wandb`` log (LevelDB-log framing), once the final ``exit`` is flushed."""
    from wandb.proto import wandb_internal_pb2

    deadline = time.monotonic() + timeout
    while True:
        (path,) = run_dir.glob("run-*.wandb")
        data, records, pending, pos = path.read_bytes(), [], b"", 7
        while pos + 7 <= len(data):
            left = 32768 - pos % 32768
            if left < 7:
                pos += left
                continue
            _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
            chunk = data[pos + 7 : pos + 7 + length]
            pos += 7 + length
            if kind == 0 or len(chunk) < length:
                break
            pending = chunk if kind in (1, 2) else pending + chunk
            if kind in (1, 4):
                records.append(wandb_internal_pb2.Record.FromString(pending))  # type: ignore[attr-defined]
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.05)


def test_four_loggers_at_once_each_read_back_with_its_own_tool(tracker_env: Path) -> None:
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from ember.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger, WandbLogger

    root = tracker_env
    csv_logger = CSVLogger(root / "csv")
    tb_logger = TensorBoardLogger(root / "tb")
    wandb_logger = WandbLogger(project="ember", save_dir=root, offline=True)
    mlflow_uri = (root / "mlruns").as_uri()  # file:...
    mlflow_logger = MLFlowLogger(experiment_name="ember", tracking_uri=mlflow_uri)
    trainer = quiet_trainer(root, max_epochs=2, log_every_n_steps=1, callbacks=[LearningRateMonitor()],
                            logger=[csv_logger, tb_logger, wandb_logger, mlflow_logger])
    trainer.fit(Regressor(lr=0.02), loader(), loader(n=8, seed=1))  # 5 steps per epoch
    steps = list(range(10))
    train_loss = [float(v) for v in _csv_column(csv_logger, "train_loss")]
    assert len(train_loss) == 10 and all(v > 0 for v in train_loss)

    # CSV: every logged name is a column; steps as logged
    header, rows = _read_csv(Path(csv_logger.log_dir) / "metrics.csv")
    assert {"step", "epoch", "train_loss", "val_loss", "lr-SGD"} <= set(header)
    assert [int(r["step"]) for r in rows if r["train_loss"]] == steps
    assert [int(r["step"]) for r in rows if r["val_loss"]] == [4, 9]
    # hyperparameters from save_hyperparameters
    for logger in (csv_logger, tb_logger):
        assert yaml.safe_load((Path(logger.log_dir) / "hparams.yaml").read_text()) == {"lr": 0.02, "features": 4}

    # TensorBoard: tensorboard's own reader
    events = EventAccumulator(tb_logger.log_dir)
    events.Reload()
    assert {"train_loss", "val_loss", "lr-SGD", "epoch"} <= set(events.Tags()["scalars"])
    scalars = events.Scalars("train_loss")
    assert [e.step for e in scalars] == steps
    assert [e.value for e in scalars] == pytest.approx(train_loss)
    assert [e.step for e in events.Scalars("val_loss")] == [4, 9]

    # W&B offline run directory: history rows and the config
    run_dirs = sorted((root / "wandb").glob(f"offline-run-*-{wandb_logger.version}"))
    assert len(run_dirs) == 1
    records = _wandb_records(run_dirs[0])
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    logged = [(row["trainer/global_step"], row["train_loss"]) for row in history if "train_loss" in row]
    assert [s for s, _ in logged] == steps and [v for _, v in logged] == pytest.approx(train_loss)
    assert [row["trainer/global_step"] for row in history if "val_loss" in row] == [4, 9]
    config = {i.key: json.loads(i.value_json) for r in records if r.WhichOneof("record_type") == "config"
              for i in r.config.update}
    assert config["lr"] == 0.02 and config["features"] == 4

    # MLflow file store: metric history and params through MlflowClient
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # the reader opts in; the fixture's monkeypatch restores it
    client = MlflowClient(mlflow_uri)
    history_ml = client.get_metric_history(mlflow_logger.run_id, "train_loss")
    assert [m.step for m in history_ml] == steps and [m.value for m in history_ml] == pytest.approx(train_loss)
    assert [m.step for m in client.get_metric_history(mlflow_logger.run_id, "val_loss")] == [4, 9]
    lrs = client.get_metric_history(mlflow_logger.run_id, "lr-SGD")  # every step (and each epoch start)
    assert {m.step for m in lrs} == set(steps) and {m.value for m in lrs} == {0.02}
    run = client.get_run(mlflow_logger.run_id)
    assert run.data.params == {"lr": "0.02", "features": "4"} and run.info.status == "FINISHED"


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def _csv_column(logger: Any, name: str) -> list[str]:
    return [r[name] for r in _read_csv(Path(logger.log_dir) / "metrics.csv")[1] if r[name]]


# ------------------------------------------------------------------------------------------- profilers


def _rows(table: str) -> dict[str, list[str]]:
    rows = {}
    for line in table.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def test_simple_profiler_counts_each_hook_and_writes_the_table(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    profiler = SimpleProfiler(filename="perf")
    trainer = quiet_trainer(tmp_path, max_epochs=2, accumulate_grad_batches=2, profiler=profiler)
    trainer.fit(Regressor(), loader(n=24), loader(n=8, seed=1))  # 6 micro-batches, 3 optimizer steps per epoch
    rows = _rows(capsys.readouterr().out)
    calls = {action: int(cells[1]) for action, cells in rows.items() if action not in ("Action", "Total")}
    assert trainer.global_step == 6
    assert calls["[LightningModule]Regressor.training_step"] == 12  # one per batch
    assert calls["[LightningModule]Regressor.backward"] == 12
    assert calls["[LightningModule]Regressor.optimizer_step"] == 6  # one per optimizer step
    assert calls["[LightningModule]Regressor.optimizer_zero_grad"] == 6
    assert calls["[LightningModule]Regressor.validation_step"] == 4  # 2 epochs x 2 batches, no sanity check
    assert calls["run_training_batch"] == 12 and calls["run_training_epoch"] == 2
    assert calls["[_TrainingEpochLoop].train_dataloader_next"] == 12
    assert calls["[LightningModule]Regressor.configure_optimizers"] == 1
    for action, cells in rows.items():
        if action in calls:
            mean, _, total, _ = (float(c) for c in cells)
            assert total == pytest.approx(mean * calls[action], rel=1e-3)
    text = (tmp_path / "fit-perf-0.txt").read_text()  # dirpath defaults to the run directory
    assert text.startswith("FIT Profiler Report") and "[LightningModule]Regressor.optimizer_step" in text


def test_advanced_profiler_gives_cprofile_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trainer = quiet_trainer(tmp_path, max_epochs=1, profiler="advanced")
    trainer.fit(Regressor(), loader())
    out = capsys.readouterr().out
    printed = out[out.index("FIT Profiler Report"):].splitlines()
    assert len(printed) < 100 and max(len(line) for line in printed) <= 130  # the top, readable in a terminal
    assert printed[-1] == f"Full report: {tmp_path / 'fit-profile-0.txt'}"
    full = (tmp_path / "fit-profile-0.txt").read_text()  # the rest: every action's pstats text
    section = full.split("Profile stats for: [LightningModule]Regressor.training_step")[1]
    assert re.search(r"\d+ function calls", section) and "cumulative" in section and "mse_loss" in section


def test_pytorch_profiler_writes_a_chrome_trace(tmp_path: Path) -> None:
    trainer = quiet_trainer(tmp_path, max_epochs=1, profiler="pytorch")
    trainer.fit(Regressor(), loader())
    (trace,) = tmp_path.glob("*.pt.trace.json")
    events = json.loads(trace.read_text())["traceEvents"]
    names = {e.get("name") for e in events}
    assert "[ember][LightningModule]Regressor.training_step" in names and "aten::mse_loss" in names
    steps = [e for e in events if e.get("name") == "[ember][LightningModule]Regressor.training_step"]
    assert len(steps) == 5


def test_profiler_object_sees_every_action_and_a_failed_fit_stops_it(tmp_path: Path) -> None:
    class Recorder(Profiler):
        def __init__(self) -> None:
            super().__init__()
            self.started: list[str] = []
            self.open: list[str] = []
            self.torn_down: list[str | None] = []

        def start(self, action_name: str) -> None:
            self.started.append(action_name)
            self.open.append(action_name)

        def stop(self, action_name: str) -> None:
            self.open.remove(action_name)

        def teardown(self, stage: str | None) -> None:
            self.torn_down.append(stage)

    recorder = Recorder()
    trainer = quiet_trainer(tmp_path, max_epochs=1, profiler=recorder)
    trainer.fit(Regressor(), loader())
    assert recorder.started.count("[LightningModule]Regressor.training_step") == 5
    assert recorder.open == [] and recorder.torn_down == ["fit"]

    class Fails(Regressor):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            if batch_idx == 2:
                raise RuntimeError("boom")
            return super().training_step(batch, batch_idx)

    trainer = quiet_trainer(tmp_path, max_epochs=1, profiler="pytorch")
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(Fails(), loader())
    assert trainer.profiler.profiler is None  # type: ignore[attr-defined]  # torch.profiler stopped
    again = quiet_trainer(tmp_path, max_epochs=1, profiler="pytorch")  # so a new one can start
    again.fit(Regressor(), loader())


def test_no_profiler_is_a_pass_through(tmp_path: Path) -> None:
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    assert isinstance(trainer.profiler, PassThroughProfiler) and not trainer._profiling
    calls: list[str] = []
    trainer.profiler.start = calls.append  # type: ignore[method-assign]
    trainer.fit(Regressor(), loader())
    assert calls == []  # hooks are not timed; the loop's few profile() calls are bare nullcontexts
