"""ember.Module on its own: hyperparameters, the LightningModule alias, properties without a Trainer."""

from __future__ import annotations

from argparse import Namespace
from pathlib import Path
from typing import Any

import pytest
import torch
from trainer_helpers import Regressor, loader, quiet_trainer

import ember as L


class Base(L.Module):
    def __init__(self, width: int = 8, activation: str = "relu", **extra: Any) -> None:
        super().__init__()
        self.save_hyperparameters(ignore="activation")
        self.lin = torch.nn.Linear(width, 1)


class Child(Base):
    def __init__(self, width: int = 4, dropout: float = 0.1) -> None:
        super().__init__(width=width * 2, tag="child")


def test_save_hyperparameters_captures_init_arguments() -> None:
    assert dict(Base(16, note="x").hparams) == {"width": 16, "note": "x"}
    assert Base().hparams.width == 8
    assert dict(Child(3).hparams) == {"width": 3, "dropout": 0.1, "tag": "child"}  # the outer __init__ wins

    class Chosen(L.Module):
        def __init__(self, lr: float, layers: int, name: str = "n") -> None:
            super().__init__()
            self.save_hyperparameters("lr", "layers")

    assert dict(Chosen(0.1, 2).hparams) == {"lr": 0.1, "layers": 2}

    class FromNamespace(L.Module):
        def __init__(self, args: Namespace) -> None:
            super().__init__()
            self.save_hyperparameters(args)

    assert dict(FromNamespace(Namespace(lr=1e-3)).hparams) == {"lr": 1e-3}
    with pytest.raises(AttributeError, match="hparams has no 'missing'"):
        _ = Base().hparams.missing


def test_module_without_a_trainer() -> None:
    module = Regressor()
    assert L.LightningModule is L.Module and isinstance(module, torch.nn.Module)
    assert module.device == torch.device("cpu") and module.current_epoch == 0 and module.global_step == 0
    assert module.automatic_optimization is True
    with pytest.raises(RuntimeError, match=r"not attached to an ember\.Trainer"):
        _ = module.trainer
    with pytest.warns(UserWarning, match="ignored: the module is not attached"):
        module.log("x", 1.0)


def test_print_and_predict_step_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    class Printing(Regressor):
        def forward(self, batch: Any) -> torch.Tensor:
            return self.net(batch[0])

        def on_train_end(self) -> None:
            self.print("done on rank", self.global_rank)

    trainer = quiet_trainer(tmp_path, max_epochs=1)
    module = Printing()
    trainer.fit(module, loader())
    assert "done on rank 0" in capsys.readouterr().out
    predictions = trainer.predict(module, loader(n=8))
    assert predictions is not None and [p.shape for p in predictions] == [(4, 1), (4, 1)]
    assert trainer.predict(module, loader(n=8), return_predictions=False) is None
