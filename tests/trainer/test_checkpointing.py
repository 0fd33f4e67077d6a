"""Trainer checkpoints: ember's atomic directories through Accelerator.save_state; exact mid-epoch resume;
ModelCheckpoint top-k, last, templates; ckpt_path="last" / "best"."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from trainer_helpers import Regressor, loader, quiet_trainer

from ember.callbacks import EarlyStopping, ModelCheckpoint
from ember.checkpoint import load_state


class Dropout(Regressor):
    """Dropout (global RNG) + shuffled data: resume is exact only if RNG and data position come back."""

    def __init__(self) -> None:
        super().__init__()
        self.drop = torch.nn.Dropout(0.3)

    def loss(self, batch: Any) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(self.drop(x)), y)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["module_note"] = {"saved_at": self.global_step}


def train(root: Path, ckpt_path: str | Path | None = None, every: int = 3, dirpath: Path | None = None,
          seed_model: int = 0) -> tuple[Any, Dropout]:
    torch.manual_seed(seed_model)
    module = Dropout()
    checkpoint = ModelCheckpoint(dirpath=dirpath or root / "ckpt", filename="{step}", every_n_train_steps=every,
                                 save_top_k=-1)
    trainer = quiet_trainer(root, max_epochs=2, seed=0, callbacks=[checkpoint], enable_checkpointing=True)
    trainer.fit(module, loader(n=20, batch_size=4, shuffle=True), ckpt_path=ckpt_path)
    return trainer, module


def test_resume_mid_epoch_is_exact(tmp_path: Path) -> None:
    full_trainer, full = train(tmp_path / "a")
    ckpts = sorted(p.name for p in (tmp_path / "a" / "ckpt").iterdir() if p.is_dir())
    assert ckpts == ["step=3", "step=6", "step=9"]  # 5 batches per epoch: 3 and 9 are mid-epoch
    state = load_state(tmp_path / "a" / "ckpt" / "step=3", "trainer")
    assert state["loop"] == {"epoch": 0, "batch_idx": 3, "batches_that_stepped": 3, "total_batches": 3,
                             "epoch_finished": False}
    assert state["module_note"] == {"saved_at": 3} and state["hparams"] == {"lr": 0.05, "features": 4}
    for name in ("step=3", "step=6", "step=9"):
        trainer, resumed = train(tmp_path / name, ckpt_path=tmp_path / "a" / "ckpt" / name, seed_model=123,
                                 dirpath=tmp_path / name / "ckpt")
        assert trainer.global_step == 10 and trainer.current_epoch == 2
        for (k, v), w in zip(resumed.state_dict().items(), full.state_dict().values()):
            assert torch.equal(v, w), (name, k)  # bit-identical to the run that never stopped
    assert float(trainer.callback_metrics["train_loss"]) == float(full_trainer.callback_metrics["train_loss"])


def test_ckpt_path_last_and_best(tmp_path: Path) -> None:
    _, full = train(tmp_path)
    torch.manual_seed(7)
    trainer, resumed = train(tmp_path, ckpt_path="last", seed_model=9)  # newest: step=9 in the same dirpath
    assert trainer.ckpt_path is not None and trainer.ckpt_path.endswith("step=9")
    for v, w in zip(resumed.state_dict().values(), full.state_dict().values()):
        assert torch.equal(v, w)
    with pytest.warns(UserWarning, match="no checkpoint"):
        quiet_trainer(tmp_path / "empty", max_epochs=1).fit(Regressor(), loader(), ckpt_path="last")

    checkpoint = ModelCheckpoint(monitor="val_loss", dirpath=tmp_path / "best")
    trainer = quiet_trainer(tmp_path, max_epochs=3, callbacks=[checkpoint], enable_checkpointing=True)
    trainer.fit(Regressor(), loader(), loader(n=8, seed=1))
    module = Regressor()
    trainer.test(module, loader(n=8, seed=1), ckpt_path="best", verbose=False)
    assert torch.equal(module.net.weight, load_best_weight(checkpoint.best_model_path))


def load_best_weight(path: str) -> torch.Tensor:
    from ember.checkpoint import read_tensors

    return read_tensors(Path(path), "model.safetensors")["net.weight"]


class Scripted(Regressor):
    VALUES = (3.0, 1.0, 2.0, 0.5, 4.0)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("score", torch.tensor(self.VALUES[self.current_epoch]))


def test_top_k_keeps_the_best_and_deletes_the_rest(tmp_path: Path) -> None:
    top2 = ModelCheckpoint(dirpath=tmp_path / "top", filename="{epoch}-{score:.1f}", monitor="score", save_top_k=2,
                           save_last=True)
    best_max = ModelCheckpoint(dirpath=tmp_path / "max", monitor="score", mode="max", auto_insert_metric_name=False,
                               filename="e{epoch}")
    trainer = quiet_trainer(tmp_path, max_epochs=5, callbacks=[top2, best_max], enable_checkpointing=True)
    trainer.fit(Scripted(), loader(n=8), loader(n=4, seed=1))
    names = sorted(p.name for p in (tmp_path / "top").iterdir() if p.is_dir())
    assert names == ["epoch=1-score=1.0", "epoch=3-score=0.5", "last"]
    assert Path(top2.best_model_path).name == "epoch=3-score=0.5" and float(top2.best_model_score) == 0.5
    assert {Path(p).name: float(v) for p, v in top2.best_k_models.items()} == {
        "epoch=1-score=1.0": 1.0, "epoch=3-score=0.5": 0.5}
    assert Path(top2.last_model_path).name == "last"
    assert load_state(Path(top2.last_model_path), "trainer")["loop"]["epoch"] == 4
    assert sorted(p.name for p in (tmp_path / "max").iterdir() if p.is_dir()) == ["e4"]
    assert trainer.checkpoint_callback is top2 and trainer.checkpoint_callbacks == [top2, best_max]
    # the callback state travels in the checkpoint
    saved = load_state(Path(top2.best_model_path), "trainer")["callbacks"]
    assert float(saved[top2.state_key]["best_model_score"]) == 0.5


def test_callback_state_is_restored_on_resume(tmp_path: Path) -> None:
    early = EarlyStopping(monitor="score", patience=10)
    last = ModelCheckpoint(dirpath=tmp_path / "c", save_last=True, save_top_k=0)
    trainer = quiet_trainer(tmp_path, max_epochs=3, callbacks=[early, last], enable_checkpointing=True)
    trainer.fit(Scripted(), loader(n=8), loader(n=4, seed=1))
    assert early.wait_count == 1 and float(early.best_score) == 1.0
    again = EarlyStopping(monitor="score", patience=10)
    trainer = quiet_trainer(tmp_path, max_epochs=4, callbacks=[again, ModelCheckpoint(dirpath=tmp_path / "c")],
                            enable_checkpointing=True)
    trainer.fit(Scripted(), loader(n=8), loader(n=4, seed=1), ckpt_path=tmp_path / "c" / "last")
    assert trainer.current_epoch == 4 and again.wait_count == 0 and float(again.best_score) == 0.5


def test_save_checkpoint_by_hand_and_validate_from_it(tmp_path: Path) -> None:
    module = Regressor()
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(module, loader())
    path = trainer.save_checkpoint(tmp_path / "manual")
    assert (path / "manifest.json").is_file() and (path / "trainer.json").is_file()
    assert not (tmp_path / "latest").exists()  # a path of the user's own: no `latest` pointer next to it
    fresh = Regressor()
    (a,) = trainer.validate(fresh, loader(n=8, seed=1), ckpt_path=path, verbose=False)
    (b,) = trainer.validate(module, loader(n=8, seed=1), verbose=False)
    assert a == b
