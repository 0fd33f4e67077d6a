"""The problem every DeepSpeed test trains: a tiny transformer block on fixed data (shared by the workers)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

SEQ, DIM = 4, 16
BATCH, ACCUM, STEPS = 2, 2, 12  # per rank: 12 optimizer steps of 2 micro-batches of 2 items
LR, CLIP = 1e-2, 1.0


class Block(torch.nn.Module):
    """Attention + MLP with layer norms and residuals, then a linear head: a transformer layer in miniature."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = torch.nn.Linear(DIM, DIM)
        self.attn = torch.nn.MultiheadAttention(DIM, num_heads=2, batch_first=True, bias=False)  # a key bias has
        # no gradient in exact arithmetic; Adam would turn its rounding noise into full-size updates
        self.norm1, self.norm2 = torch.nn.LayerNorm(DIM), torch.nn.LayerNorm(DIM)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(DIM, 2 * DIM), torch.nn.GELU(), torch.nn.Linear(2 * DIM, DIM))
        self.head = torch.nn.Linear(DIM, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        q = self.norm1(h)
        h = h + self.attn(q, q, q, need_weights=False)[0]
        h = h + self.mlp(self.norm2(h))
        return self.head(h.mean(dim=1)).squeeze(-1)


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return Block()


def dataset(world: int = 2) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    n = STEPS * ACCUM * BATCH * world
    x = torch.randn(n, SEQ, DIM, generator=g)
    y = 3.0 * x.sum(dim=(1, 2)) / DIM + torch.randn(n, generator=g)  # large targets: clipping is active
    return TensorDataset(x, y)


def loss_fn(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(model(x).float(), y.float())
