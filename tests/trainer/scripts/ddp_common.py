"""Data and model shared by the Trainer and the Accelerator DDP scripts (same seed → same start)."""

from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader, TensorDataset

EPOCHS, LR, BATCH = 2, 0.05, 4
ACCELERATOR = os.environ.get("EMBER_TEST_ACCELERATOR", "cpu")  # "gpu" for the same check over NCCL


def dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(44, 8, generator=g)  # 44 = 5.5 rounds of 2 ranks x 4: the last round is padded
    w = torch.randn(8, 1, generator=g)
    return TensorDataset(x, torch.tanh(x @ w) + 0.1 * torch.randn(44, 1, generator=g))


def dataloader() -> DataLoader[tuple[torch.Tensor, ...]]:
    return DataLoader(dataset(), batch_size=BATCH, shuffle=True)


def body() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def loss_fn(model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    x, y = batch
    return torch.nn.functional.mse_loss(model(x), y)
