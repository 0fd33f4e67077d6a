"""Loggers write real files that their own tools read back."""

from __future__ import annotations

import csv
import json
import os
import re
import struct
import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path
from typing import Any

import pytest
import yaml

from ember.loggers import (
    TRACKER_NAMES,
    CSVLogger,
    Logger,
    MLFlowLogger,
    TensorBoardLogger,
    WandbLogger,
    make_logger,
)


def _roundtrip(state: dict[str, Any]) -> dict[str, Any]:
    """State dicts must survive JSON (that is how checkpoints store them)."""
    loaded: dict[str, Any] = json.loads(json.dumps(state))
    return loaded


def _read_csv(path: str) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


# --------------------------------------------------------------------------- CSV


def test_csv_metrics_columns_and_late_key(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, name="exp")
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.log_metrics({"loss": 0.5}, step=1)
    logger.save()  # header written with the keys known so far
    assert _read_csv(os.path.join(logger.log_dir, "metrics.csv"))[0] == ["step", "loss"]
    logger.log_metrics({"loss": 0.25, "acc": 0.9}, step=2)  # new key: header must widen
    logger.finalize("success")

    header, rows = _read_csv(os.path.join(logger.log_dir, "metrics.csv"))
    assert header == ["step", "acc", "loss"]
    assert [(r["step"], r["loss"], r["acc"]) for r in rows] == [
        ("0", "1.0", ""),
        ("1", "0.5", ""),
        ("2", "0.25", "0.9"),
    ]
    assert logger.log_dir == str(tmp_path / "exp" / "version_0")


def test_csv_flushes_every_n_steps_and_prefix(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, prefix="train", flush_logs_every_n_steps=10)
    path = os.path.join(logger.log_dir, "metrics.csv")
    for step in range(0, 9, 3):  # steps 0, 3, 6: no multiple of 10 crossed yet
        logger.log_metrics({"loss": float(step)}, step=step)
    assert not os.path.exists(path)
    logger.log_metrics({"loss": 9.0}, step=10)  # crosses step 10 even though (step + 1) % 10 != 0
    header, rows = _read_csv(path)
    assert header == ["step", "train-loss"]
    assert [r["step"] for r in rows] == ["0", "3", "6", "10"]
    assert logger.name == "ember_logs"


def test_csv_step_defaults_to_row_index_and_numbers_are_checked(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path)
    logger.log_metrics({"a": 1})
    logger.log_metrics({"a": True})
    logger.finalize("success")
    _, rows = _read_csv(os.path.join(logger.log_dir, "metrics.csv"))
    assert [(r["step"], r["a"]) for r in rows] == [("0", "1"), ("1", "1")]
    with pytest.raises(TypeError, match=r"'bad'.*str"):
        logger.log_metrics({"bad": "oops"})  # type: ignore[dict-item]


def test_csv_hparams_yaml(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path)
    params = Namespace(lr=0.1, layers=(1, 2), path=Path("/data"), nested={"a": 1}, obj=object(), flag=None)
    logger.log_hyperparams(params)
    logger.log_hyperparams({"epochs": 3})
    with open(os.path.join(logger.log_dir, "hparams.yaml")) as file:
        saved = yaml.safe_load(file)
    assert saved["lr"] == 0.1
    assert saved["layers"] == [1, 2]
    assert saved["path"] == "/data"
    assert saved["nested"] == {"a": 1}
    assert saved["obj"].startswith("<object object")
    assert saved["flag"] is None
    assert saved["epochs"] == 3


def test_version_numbering(tmp_path: Path) -> None:
    root = tmp_path / "exp"
    for d in ("version_0", "version_3", "version_x", "other"):
        (root / d).mkdir(parents=True)
    (root / "version_9").write_text("a file, not a version directory")
    logger = CSVLogger(tmp_path, name="exp")
    assert logger.version == 4
    (root / "version_5").mkdir()
    assert logger.version == 4  # computed once
    assert TensorBoardLogger(tmp_path, name="exp").version == 6
    assert CSVLogger(tmp_path, name="fresh").version == 0
    assert CSVLogger(tmp_path, name="exp", version="custom").log_dir == str(root / "custom")
    assert CSVLogger(tmp_path, name=None).log_dir == str(tmp_path / "version_0")


def test_csv_state_dict_resumes_same_directory(tmp_path: Path) -> None:
    first = CSVLogger(tmp_path, flush_logs_every_n_steps=1)
    for step in range(5):
        first.log_metrics({"loss": 1.0}, step=step)
    state = _roundtrip(first.state_dict())  # checkpoint taken at step 4
    for step in range(5, 8):  # the run goes on, then crashes before the next checkpoint
        first.log_metrics({"loss": 1.0}, step=step)
    first.finalize("failed")
    CSVLogger(tmp_path).log_dir  # noqa: B018 - another run appearing meanwhile must not matter

    resumed = CSVLogger(tmp_path)
    resumed.load_state_dict(state)
    assert resumed.log_dir == first.log_dir
    for step in range(5, 7):
        resumed.log_metrics({"loss": 2.0, "lr": 0.1}, step=step)
    resumed.finalize("success")

    header, rows = _read_csv(os.path.join(first.log_dir, "metrics.csv"))
    assert header == ["step", "loss", "lr"]
    assert [(r["step"], r["loss"]) for r in rows] == [(str(s), "1.0") for s in range(5)] + [
        ("5", "2.0"),
        ("6", "2.0"),
    ]


def test_load_state_dict_errors(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path)
    logger.log_metrics({"a": 1.0}, step=0)
    with pytest.raises(RuntimeError, match="before anything is logged"):
        logger.load_state_dict(logger.state_dict())
    with pytest.raises(ValueError, match="same logger classes"):
        TensorBoardLogger(tmp_path).load_state_dict(logger.state_dict())
    with pytest.raises(ValueError, match="Did you mean 'failed'"):
        logger.finalize("fail")


def test_existing_metrics_file_is_replaced_with_a_warning(tmp_path: Path) -> None:
    first = CSVLogger(tmp_path, version=0)
    first.log_metrics({"a": 1.0}, step=0)
    first.finalize("success")
    second = CSVLogger(tmp_path, version=0)
    with pytest.warns(UserWarning, match="overwritten"):
        second.log_metrics({"b": 2.0}, step=0)
    second.finalize("success")
    assert _read_csv(os.path.join(second.log_dir, "metrics.csv"))[0] == ["step", "b"]


# ------------------------------------------------------------------ TensorBoard


def _accumulator(path: str) -> Any:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(path)
    acc.Reload()
    return acc


def test_tensorboard_scalars_and_hparams(tmp_path: Path) -> None:
    from tensorboard.plugins.hparams import plugin_data_pb2

    logger = TensorBoardLogger(tmp_path, name="tb", prefix="train", sub_dir="events")
    for step in range(3):
        logger.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
    logger.log_hyperparams({"lr": 0.01, "optim": {"name": "adam"}, "layers": [4, 2]})
    logger.finalize("success")

    assert logger.log_dir == str(tmp_path / "tb" / "version_0" / "events")
    acc = _accumulator(logger.log_dir)
    loss = acc.Scalars("train-loss")
    assert [e.step for e in loss] == [0, 1, 2]
    assert [e.value for e in loss] == pytest.approx([1.0, 0.5, 1 / 3])
    assert [e.value for e in acc.Scalars("train-hp_metric")] == [-1.0]

    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["lr"].number_value == pytest.approx(0.01)
    assert hparams["optim/name"].string_value == "adam"
    assert hparams["layers"].string_value == "[4, 2]"

    with open(os.path.join(logger.log_dir, "hparams.yaml")) as file:
        assert yaml.safe_load(file) == {"lr": 0.01, "optim": {"name": "adam"}, "layers": [4, 2]}


def test_tensorboard_resume_hides_steps_after_checkpoint(tmp_path: Path) -> None:
    first = TensorBoardLogger(tmp_path)
    for step in range(5):
        first.log_metrics({"loss": 1.0}, step=step)
    state = _roundtrip(first.state_dict())
    for step in range(5, 10):
        first.log_metrics({"loss": 1.0}, step=step)
    first.finalize("interrupted")

    resumed = TensorBoardLogger(tmp_path)
    resumed.load_state_dict(state)
    for step in range(5, 8):
        resumed.log_metrics({"loss": 2.0}, step=step)
    resumed.finalize("success")

    assert resumed.log_dir == first.log_dir
    assert len([f for f in os.listdir(first.log_dir) if f.startswith("events.out")]) == 2
    events = _accumulator(first.log_dir).Scalars("loss")
    assert [(e.step, e.value) for e in events] == [(s, 1.0) for s in range(5)] + [
        (s, 2.0) for s in range(5, 8)
    ]


def test_tensorboard_log_graph(tmp_path: Path) -> None:
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    logger = TensorBoardLogger(tmp_path, log_graph=True)
    logger.log_graph(model, torch.zeros(1, 3))
    logger.finalize("success")
    assert _accumulator(logger.log_dir).Tags()["graph"] is True
    off = TensorBoardLogger(tmp_path, name="off")
    off.log_graph(model, torch.zeros(1, 3))
    assert off._experiment is None  # log_graph=False: nothing is created


# ------------------------------------------------------------------------ W&B


@pytest.fixture
def wandb_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An offline, silent W&B with all its files under tmp_path."""
    pytest.importorskip("wandb")
    home = tmp_path / "wandb_home"
    home.mkdir()
    for key in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(key, str(home))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    for key in ("WANDB_PROJECT", "WANDB_RUN_ID", "WANDB_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    import wandb

    wandb.teardown()  # W&B keeps process-wide settings from an earlier run (another test's): start from the env
    return tmp_path


def _wandb_records(run_dir: Path, timeout: float = 20.0) -> list[Any]:
    """The run's ``.wandb`` records, once W&B's writer has flushed the final ``exit`` record.

    ``run.finish()`` returns when W&B's service has *handled* the exit; its writer flushes the file
    a moment later, so wait for the record rather than read a half-written log.
    """
    deadline = time.monotonic() + timeout
    while True:
        records = _parse_wandb_log(run_dir)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.05)


def _parse_wandb_log(run_dir: Path) -> list[Any]:
    """Read a ``.wandb`` transaction log (LevelDB-log framing of protobuf ``Record`` messages)."""
    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("run-*.wandb")
    data = path.read_bytes()
    if len(data) < 7:
        return []
    assert data[:4] == b":W&B"
    block, header = 32768, 7
    pos, pending, records = 7, b"", []
    while pos + header <= len(data):
        left = block - pos % block
        if left < header:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + header])
        chunk = data[pos + header : pos + header + length]
        pos += header + length
        if kind == 0 or len(chunk) < length:  # zero padding, or a record still being written
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):  # FULL or LAST
            records.append(wandb_internal_pb2.Record.FromString(pending))  # type: ignore[attr-defined]
    return records


def _run_dirs(root: Path, run_id: str) -> list[Path]:
    """Offline run folders of ``run_id`` (a second start in the same second gets a ``-1`` suffix)."""
    return sorted(
        d for d in (root / "wandb").glob("offline-run-*") if re.search(rf"-{run_id}(-\d+)?$", d.name)
    )


def _history(records: list[Any]) -> list[dict[str, Any]]:
    rows = []
    for record in records:
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in record.history.item
                }
            )
    return rows


def _config(records: list[Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for record in records:
        if record.WhichOneof("record_type") == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
    return config


def test_wandb_offline_run_holds_metrics_and_config(wandb_env: Path) -> None:
    logger = WandbLogger(project="proj", save_dir=wandb_env, name="first", offline=True)
    run_id = logger.version  # known before the run starts
    logger.log_hyperparams(Namespace(lr=0.1, path=Path("/x")))
    for step in range(3):
        logger.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
    assert logger.experiment.id == run_id
    logger.finalize("success")

    (run_dir,) = _run_dirs(wandb_env, run_id)
    records = _wandb_records(run_dir)
    rows = [r for r in _history(records) if "loss" in r]
    assert [r["loss"] for r in rows] == pytest.approx([1.0, 0.5, 1 / 3])
    assert [r["trainer/global_step"] for r in rows] == [0, 1, 2]
    assert _config(records) == {"lr": 0.1, "path": "/x"}


def test_wandb_resume_uses_same_run_id_and_env_mode(wandb_env: Path) -> None:
    first = WandbLogger(project="proj", save_dir=wandb_env)  # offline through WANDB_MODE only
    first.log_metrics({"loss": 1.0}, step=0)
    state = _roundtrip(first.state_dict())
    first.finalize("failed")

    resumed = WandbLogger(project="other", save_dir=wandb_env)
    resumed.load_state_dict(state)
    resumed.log_metrics({"loss": 0.5}, step=1)
    assert resumed.name == "proj"
    resumed.finalize("success")

    run_dirs = _run_dirs(wandb_env, state["id"])
    assert len(run_dirs) == 2  # one folder per start, both for the same run id
    losses = [r["loss"] for d in run_dirs for r in _history(_wandb_records(d)) if "loss" in r]
    assert sorted(losses) == [0.5, 1.0]


def test_wandb_logs_checkpoint_artifacts(wandb_env: Path) -> None:
    ckpt = wandb_env / "checkpoints" / "step-00000010"
    ckpt.mkdir(parents=True)
    (ckpt / "manifest.json").write_text("{}")
    logger = WandbLogger(project="proj", save_dir=wandb_env, log_model="all")
    logger.log_metrics({"loss": 1.0}, step=10)
    logger.after_save_checkpoint(str(ckpt))
    run_id = logger.version
    logger.finalize("success")
    (run_dir,) = _run_dirs(wandb_env, run_id)
    artifacts = [r.artifact for r in _wandb_records(run_dir) if r.WhichOneof("record_type") == "artifact"]
    assert [(a.name, a.type) for a in artifacts] == [(f"model-{run_id}", "model")]


def test_wandb_rejects_offline_model_upload() -> None:
    pytest.importorskip("wandb")
    with pytest.raises(ValueError, match="offline=True"):
        WandbLogger(offline=True, log_model=True)


# --------------------------------------------------------------------- MLflow


@pytest.fixture
def mlflow_env(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)


def _reader(uri: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # the reader opts in on its own
    return MlflowClient(uri)


@pytest.mark.usefixtures("mlflow_env")
def test_mlflow_local_store_metrics_params_status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    logger = MLFlowLogger(experiment_name="exp", save_dir=str(tmp_path / "mlruns"), run_name="r1")
    logger.log_hyperparams({"lr": 0.1, "model": {"width": 8}})
    for step in range(3):
        logger.log_metrics({"loss": 1.0 / (step + 1), "acc": 0.5}, step=step)
    logger.finalize("success")
    assert "MLFLOW_ALLOW_FILE_STORE" not in os.environ  # the opt-in does not leak
    assert logger.save_dir == str(tmp_path / "mlruns")
    assert (tmp_path / "mlruns" / logger.experiment_id / logger.run_id).is_dir()

    client = _reader(logger.tracking_uri, monkeypatch)
    history = client.get_metric_history(logger.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (1, 0.5), (2, pytest.approx(1 / 3))]
    run = client.get_run(logger.run_id)
    assert run.data.params == {"lr": "0.1", "model/width": "8"}
    assert run.data.tags["mlflow.runName"] == "r1"
    assert run.info.status == "FINISHED"
    assert logger.name == logger.experiment_id and logger.version == logger.run_id


@pytest.mark.usefixtures("mlflow_env")
def test_mlflow_resume_same_run_and_key_cleaning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_dir = str(tmp_path / "mlruns")
    first = MLFlowLogger(experiment_name="exp", save_dir=save_dir)
    first.log_metrics({"loss": 1.0}, step=0)
    state = _roundtrip(first.state_dict())
    first.finalize("failed")

    resumed = MLFlowLogger(experiment_name="exp", save_dir=save_dir)
    resumed.load_state_dict(state)
    with pytest.warns(RuntimeWarning, match="'val\\(loss\\)'"):
        resumed.log_metrics({"loss": 0.5, "val(loss)": 2.0}, step=1)
    assert resumed.run_id == state["run_id"]
    resumed.finalize("success")

    client = _reader(resumed.tracking_uri, monkeypatch)
    assert [(m.step, m.value) for m in client.get_metric_history(state["run_id"], "loss")] == [
        (0, 1.0),
        (1, 0.5),
    ]
    assert [m.value for m in client.get_metric_history(state["run_id"], "valloss")] == [2.0]
    assert client.get_run(state["run_id"]).info.status == "FINISHED"
    assert len(client.search_runs([state["experiment_id"]])) == 1


@pytest.mark.usefixtures("mlflow_env")
def test_mlflow_log_model_at_finalize(tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoints" / "step-00000010"
    ckpt.mkdir(parents=True)
    (ckpt / "model.safetensors").write_bytes(b"weights")
    logger = MLFlowLogger(save_dir=str(tmp_path / "mlruns"), log_model=True)
    logger.log_metrics({"loss": 1.0}, step=10)
    logger.after_save_checkpoint(str(ckpt))
    artifacts = tmp_path / "mlruns" / logger.experiment_id / logger.run_id / "artifacts"
    assert not (artifacts / "step-00000010").exists()  # log_model=True uploads at the end
    logger.finalize("success")
    assert (artifacts / "step-00000010" / "model.safetensors").read_bytes() == b"weights"


@pytest.mark.usefixtures("mlflow_env")
def test_mlflow_database_uri_without_sqlalchemy_says_what_to_install() -> None:
    import importlib.util

    if importlib.util.find_spec("sqlalchemy") is not None:
        pytest.skip("sqlalchemy is installed")
    with pytest.raises(ModuleNotFoundError, match="pip install sqlalchemy alembic"):
        MLFlowLogger(tracking_uri="sqlite:///mlflow.db")


# ----------------------------------------------------------------- make_logger


def test_make_logger_builds_each_tracker(tmp_path: Path) -> None:
    pytest.importorskip("wandb", reason="the wandb extra is not installed")
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    csv_logger = make_logger("CSV", save_dir=tmp_path, project_name="proj", init_kwargs={"version": "v"})
    assert isinstance(csv_logger, CSVLogger)
    assert csv_logger.log_dir == str(tmp_path / "proj" / "v")
    tb = make_logger("tensorboard", save_dir=tmp_path, project_name="proj")
    assert isinstance(tb, TensorBoardLogger) and tb.name == "proj"
    wb = make_logger("wandb", save_dir=tmp_path, project_name="proj", init_kwargs={"entity": "me"})
    assert isinstance(wb, WandbLogger) and wb.name == "proj" and wb.save_dir == str(tmp_path)
    ml = make_logger("mlflow", save_dir=tmp_path, project_name="proj", init_kwargs={"run_name": "r"})
    assert isinstance(ml, MLFlowLogger) and ml._experiment_name == "proj"
    assert ml.save_dir == str(tmp_path / "mlruns")
    assert all(isinstance(x, Logger) for x in (csv_logger, tb, ml))
    assert TRACKER_NAMES == ("csv", "tensorboard", "wandb", "mlflow")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "tensorbord",
            r"Unknown tracker 'tensorbord'\. Valid names: 'csv', 'tensorboard', 'wandb', 'mlflow'\. Did you mean 'tensorboard'\?",
        ),
        ("mlfow", r"Did you mean 'mlflow'\?"),
        ("comet_ml", r"no built-in 'comet_ml' tracker.*'csv', 'tensorboard', 'wandb', 'mlflow'"),
        ("all", r"'all' stands for every installed tracker"),
    ],
)
def test_make_logger_errors(tmp_path: Path, name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_logger(name, save_dir=tmp_path, project_name="p")


def test_make_logger_unknown_without_suggestion(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as info:
        make_logger("zzz", save_dir=tmp_path, project_name="p")
    assert "Did you mean" not in str(info.value)
    assert "'csv', 'tensorboard', 'wandb', 'mlflow'" in str(info.value)


def test_import_is_lazy() -> None:
    code = (
        "import sys, ember.loggers\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('wandb', 'mlflow', 'tensorboard')]\n"
        "heavy += [m for m in sys.modules if m.startswith('torch.utils.tensorboard')]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
