"""Must-show 1: the seed's LLMFineTuner + Trainer block (examples/seed_lightning.py) on CPU with a tiny causal LM,
bf16-mixed, ModelCheckpoint + EarlyStopping + LearningRateMonitor and a CSV logger; early stopping on a stall."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from trainer_helpers import Regressor, loader, quiet_trainer

from ember.callbacks import EarlyStopping, ModelCheckpoint
from ember.checkpoint import read_model_weights

EXAMPLE = Path(__file__).parents[2] / "examples" / "seed_lightning.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("seed_lightning_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_seed_llm_finetuner_block(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    example = load_example()
    trainer = example.fine_tune(str(tmp_path), logger="csv", max_epochs=3, quiet=True)
    module = trainer.lightning_module
    assert trainer.precision == "bf16-mixed" and trainer.accumulate_grad_batches == 4
    assert module.hparams == {"model_name": "gpt2-tiny", "learning_rate": 3e-3}
    assert trainer.current_epoch == 3 and trainer.global_step == 12  # 16 micro-batches / 4 per step × 3 epochs

    with open(Path(trainer.logger.log_dir) / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    val = [(int(float(r["epoch"])), float(r["val_loss"])) for r in rows if r.get("val_loss")]
    assert [epoch for epoch, _ in val] == [0, 1, 2]
    assert val[-1][1] < val[0][1]  # it learns

    # the best checkpoint tracks the minimum val_loss, and is a committed ember checkpoint directory
    ckpt = trainer.checkpoint_callback
    best_epoch, best_val = min(val, key=lambda ev: ev[1])
    assert float(ckpt.best_model_score) == pytest.approx(best_val, rel=1e-6)
    assert Path(ckpt.best_model_path).name.startswith(f"epoch={best_epoch}-")
    assert (Path(ckpt.best_model_path) / "manifest.json").is_file()
    assert [p.name for p in Path(ckpt.dirpath).iterdir() if p.is_dir()] == [Path(ckpt.best_model_path).name]

    # the learning rate is logged at every optimizer step (log_every_n_steps=1)
    lr_steps = sorted({int(r["step"]) for r in rows if r.get("lr-AdamW")})
    assert lr_steps == list(range(trainer.global_step))
    sched = trainer.lr_scheduler_configs[0]
    assert sched.interval == "epoch"  # ([opt], [sched]) means per-epoch stepping, as in Lightning
    by_epoch: dict[int, set[float]] = {}
    for r in rows:
        if r.get("lr-AdamW"):
            by_epoch.setdefault(int(r["step"]) // 4, set()).add(round(float(r["lr-AdamW"]), 8))
    assert by_epoch == {0: {0.0}, 1: {1.5e-3}, 2: {3e-3}}  # warm-up of 2 epochs, then cosine

    # validate(ckpt_path="best") loads exactly the best checkpoint's weights into a fresh module
    fresh = example.LLMFineTuner("gpt2-tiny", learning_rate=3e-3)
    data = torch.utils.data.DataLoader(example.ProgressionTokens(16, seed=1), batch_size=8)
    (result,) = trainer.validate(fresh, data, ckpt_path="best", verbose=False)
    saved = read_model_weights(Path(ckpt.best_model_path))  # FSDP: assembled from the shards
    loaded = trainer.accelerator.get_state_dict(fresh)  # the fresh module is sharded too: gather its weights
    assert loaded.keys() == saved.keys()
    for k, v in loaded.items():
        assert torch.equal(v, saved[k]), k
    assert result["val_loss"] == pytest.approx(best_val, rel=1e-3)


class Stalling(Regressor):
    """val_metric per epoch: 1.0, 0.5, 0.4, then stuck at 0.4 — patience 3 must stop after epoch 5."""

    SCHEDULE = (1.0, 0.5, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_metric", torch.tensor(self.SCHEDULE[self.current_epoch]))


def test_early_stopping_stops_when_the_metric_stalls(tmp_path: Path) -> None:
    early = EarlyStopping(monitor="val_metric", patience=3, mode="min")
    best = ModelCheckpoint(monitor="val_metric", mode="min", dirpath=tmp_path / "ckpt")
    trainer = quiet_trainer(tmp_path, max_epochs=10, callbacks=[early, best], enable_checkpointing=True)
    trainer.fit(Stalling(), loader(n=8), loader(n=4, seed=1))
    assert early.stopped_epoch == 5 and early.wait_count == 3
    assert trainer.current_epoch == 6 and trainer.should_stop
    assert Path(best.best_model_path).name == "epoch=2-step=6" and float(best.best_model_score) == pytest.approx(0.4)


def test_min_epochs_overrules_early_stopping(tmp_path: Path) -> None:
    early = EarlyStopping(monitor="val_metric", patience=1)
    trainer = quiet_trainer(tmp_path, max_epochs=10, min_epochs=7, callbacks=[early])
    trainer.fit(Stalling(), loader(n=8), loader(n=4, seed=1))
    assert trainer.current_epoch == 7


def test_stopping_and_divergence_thresholds(tmp_path: Path) -> None:
    early = EarlyStopping(monitor="val_metric", patience=100, stopping_threshold=0.45)
    quiet_trainer(tmp_path, max_epochs=10, callbacks=[early]).fit(Stalling(), loader(n=8), loader(n=4, seed=1))
    assert early.stopped_epoch == 2  # 0.4 < 0.45

    class Diverging(Regressor):
        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("val_metric", torch.tensor(float(self.current_epoch)), on_epoch=True)

    early = EarlyStopping(monitor="val_metric", patience=100, divergence_threshold=2.5)
    quiet_trainer(tmp_path, max_epochs=10, callbacks=[early]).fit(Diverging(), loader(n=8), loader(n=4, seed=1))
    assert early.stopped_epoch == 3
