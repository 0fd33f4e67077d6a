"""The seed's remaining snippets as scripts (examples/seed_migration.py, seed_hf_trainer.py, seed_lightning.py
--production): each runs on CPU with a tiny model and does what the seed says it does."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
import torch

from ember.trainer._collate import DataCollator

pytest.importorskip("transformers", reason="the seed examples build tiny transformers models")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_migration_pairs_train_identically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before and after each migration: the same losses, bit for bit, on one CPU process."""
    monkeypatch.chdir(tmp_path)
    m = _load("seed_migration")
    for before, after in ((m.standard_pytorch, m.with_accelerate), (m.pytorch_before, m.accelerate_after),
                          (m.plain_loop_with_zero_grad, m.lightning_after)):
        expected, got = before(), after()
        assert len(expected) == 4 and got == expected, (before.__name__, expected, got)
    # the seed's loops never zero the gradients; the Trainer's does: the last step tells them apart
    assert m.standard_pytorch()[-1] != m.plain_loop_with_zero_grad()[-1]
    assert m.quick_experiment() == 4


def test_hf_style_collation_masks_padding_out_of_the_loss() -> None:
    hf = _load("seed_hf_trainer")
    model = hf.tiny_gpt2().eval()
    rows = [{"input_ids": [5, 6, 7, 8, 9], "text": "a"}, {"input_ids": [10, 11, 12], "text": "b"}]
    batch = DataCollator(model)(rows)  # what fit(module, dataset) collates with
    assert set(batch) == {"input_ids", "attention_mask", "labels"}  # `text` dropped, as remove_unused_columns
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[5, 6, 7, 8, 9], [10, 11, 12, -100, -100]]
    with torch.no_grad():
        padded = float(model(**batch).loss)
        singles = [(float(model(input_ids=torch.tensor([r["input_ids"]]), labels=torch.tensor([r["input_ids"]])).loss),
                    len(r["input_ids"]) - 1) for r in rows]
    weighted = sum(loss * n for loss, n in singles) / sum(n for _, n in singles)
    assert padded == pytest.approx(weighted, rel=1e-5)  # padding adds nothing to the loss


def test_hf_trainer_job_on_ember_trainer(tmp_path: Path) -> None:
    hf = _load("seed_hf_trainer")
    dataset = hf.make_dataset()
    if importlib.util.find_spec("datasets") is not None:
        import datasets

        assert isinstance(dataset, datasets.Dataset)
    collate = DataCollator(hf.tiny_gpt2())

    def mean_loss(model: torch.nn.Module) -> float:
        model.eval()
        with torch.no_grad():
            return sum(float(model(**collate([dataset[i] for i in range(j, j + 8)])).loss)
                       for j in range(0, 96, 8)) / 12

    torch.manual_seed(0)
    untrained = mean_loss(hf.tiny_gpt2())
    trainer, module = hf.train(str(tmp_path / "output"), max_epochs=4, quiet=True)
    assert trainer.precision == "bf16-mixed" and trainer.global_step == 48  # 96 rows / 8 × 4 epochs
    # under FSDP the trained weights are shards: evaluate the full weights gathered by the strategy
    assert trainer.strategy.name == "fsdp"
    state = trainer.accelerator.get_state_dict(module)
    trained_model = hf.tiny_gpt2()
    trained_model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    assert all(p.dtype == torch.float32 for p in trained_model.parameters())
    trained = mean_loss(trained_model)
    assert trained < 0.6 * untrained, (untrained, trained)


def test_production_trainer_profiles_and_logs_to_wandb_offline(tmp_path: Path) -> None:
    pytest.importorskip("wandb")
    home = tmp_path / "wandb_home"
    home.mkdir()
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off",
           "WANDB_CONFIG_DIR": str(home), "WANDB_CACHE_DIR": str(home), "WANDB_DATA_DIR": str(home),
           "OMP_NUM_THREADS": "2"}
    for key in ("WANDB_PROJECT", "WANDB_RUN_ID", "WANDB_API_KEY"):
        env.pop(key, None)
    out = subprocess.run([sys.executable, str(EXAMPLES / "seed_lightning.py"), "--production", "--root-dir", "run"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    # profiler="advanced": the slowest actions in the terminal, every action in the full report
    assert "FIT Profiler Report (cProfile)" in out.stdout and "LLMFineTuner.training_step" in out.stdout
    (report,) = (tmp_path / "run").rglob("fit-profile-0.txt")
    assert "Profile stats for: [LightningModule]LLMFineTuner.training_step" in report.read_text()
    assert "production trainer: 8 steps" in out.stdout  # 32 rows / 8 × 2 epochs
    (run_dir,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    deadline = time.monotonic() + 30  # W&B's service process writes the log; it may finish after the script
    while "exit" not in (kinds := [r.WhichOneof("record_type") for r in _wandb_records(run_dir)]):
        assert time.monotonic() < deadline, kinds
        time.sleep(0.2)
    history = [{"/".join(i.nested_key) or i.key: i.value_json for i in r.history.item}
               for r in _wandb_records(run_dir) if r.WhichOneof("record_type") == "history"]
    val = [float(row["val_loss"]) for row in history if "val_loss" in row]
    assert len(val) == 2 and all(v < 4.5 for v in val)  # one validation per epoch reached W&B
    assert list((tmp_path / "run").rglob("epoch=*-step=*/manifest.json"))  # ModelCheckpoint(monitor="val_loss")


def _wandb_records(run_dir: Path) -> list[object]:
    """The protobuf records of an offline run's ``run-*.wandb`` log (LevelDB-log framing)."""
    import struct

    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("run-*.wandb")
    data, pos, pending, records = path.read_bytes(), 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # block trailer padding
            pos += 32768 - pos % 32768
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 or len(chunk) < length:
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            records.append(wandb_internal_pb2.Record.FromString(pending))  # type: ignore[attr-defined]
    return records
