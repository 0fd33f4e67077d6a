"""Data, model and single-process references shared by the core tests and their worker script.

Nothing here imports ember: the references are plain PyTorch, so a test compares ember against an
independent computation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

N_ITEMS = 20  # 10 global batches of 2: 5 per rank on 2 ranks, no padding
BATCH = 2  # per-rank batch size
LR = 0.1


def make_data(n: int = N_ITEMS) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(n, 4, generator=g)
    y = torch.randn(n, 1, generator=g)
    return x, y


def make_model() -> torch.nn.Module:
    """A small MLP with fixed weights, drawn from a private generator (the global RNG is not touched)."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model


def reference_params(world: int, accum: int, n_items: int = N_ITEMS, batch: int = BATCH) -> dict[str, torch.Tensor]:
    """One process, plain PyTorch: what ``world`` ranks x ``accum`` micro-batches of ``batch`` must give.

    With batch-interleaved sharding (global batch j goes to rank j % world, shuffle off), optimizer step k
    sees the global batches [k*world*accum, (k+1)*world*accum), i.e. one contiguous chunk of items; the
    last chunk is shorter when the epoch ends inside a window (its gradient is still a mean).
    """
    x, y = make_data(n_items)
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    chunk = batch * world * accum
    for start in range(0, n_items, chunk):
        loss = F.mse_loss(model(x[start : start + chunk]), y[start : start + chunk])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def expected_sync_pattern(world: int, accum: int, n_items: int = N_ITEMS, batch: int = BATCH) -> list[bool]:
    """Which of this rank's micro-steps end an accumulation window (the last one of the epoch always does)."""
    per_rank = n_items // (batch * world)
    return [(i + 1) % accum == 0 or i == per_rank - 1 for i in range(per_rank)]
