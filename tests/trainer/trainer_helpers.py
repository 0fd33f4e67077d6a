"""Shared pieces of the trainer tests: tiny modules and data, a quiet Trainer, process helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import ember as L

SCRIPTS = Path(__file__).parent / "scripts"
_LAUNCH_VARS = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "NODE_RANK", "MASTER_ADDR",
                "MASTER_PORT", "SLURM_NTASKS", "SLURM_PROCID"}


def regression_data(n: int = 20, seed: int = 0, features: int = 4) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    return TensorDataset(x, x.sum(dim=1, keepdim=True) + 0.1 * torch.randn(n, 1, generator=g))


def loader(n: int = 20, batch_size: int = 4, shuffle: bool = False, seed: int = 0) -> DataLoader[Any]:
    return DataLoader(regression_data(n, seed), batch_size=batch_size, shuffle=shuffle)


class Regressor(L.Module):
    """A linear regressor that logs train_loss / val_loss / test_loss."""

    def __init__(self, lr: float = 0.05, features: int = 4) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Linear(features, 1)

    def loss(self, batch: Any) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", self.loss(batch))

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.log("test_loss", self.loss(batch))

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def quiet_trainer(root: Path | str, **kwargs: Any) -> L.Trainer:
    """A CPU Trainer without the console extras (tests turn on what they look at)."""
    options: dict[str, Any] = {
        "accelerator": "cpu", "default_root_dir": str(root), "logger": False, "enable_checkpointing": False,
        "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0,
    }
    options.update(kwargs)
    return L.Trainer(**options)


def clean_env() -> dict[str, str]:
    """This environment without launcher variables, so a child starts as a fresh job."""
    env = {k: v for k, v in os.environ.items()
           if k not in _LAUNCH_VARS and not k.startswith(("EMBER_", "TORCHELASTIC_", "PYTEST_"))}
    env["OMP_NUM_THREADS"] = "1"
    env["CUDA_VISIBLE_DEVICES"] = ""  # these tests mean the CPU (gloo), also on a GPU machine
    return env


def run(cmd: list[Any], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(c) for c in cmd], env=clean_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"{cmd} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}")
    return proc


def ember_launch(*args: Any) -> list[Any]:
    return [sys.executable, "-m", "ember.cli", "launch", *args]
