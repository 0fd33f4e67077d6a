"""2-rank checks for the core regression tests (``test_core_defects.py``). Usage: ``defects_worker.py OUT_DIR CHECK``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from ember import Accelerator


def placement_off() -> dict[str, object]:
    """Defect 1: prepare(model, device_placement=[False]) must still wrap for DDP (only the device move is skipped)."""
    acc = Accelerator(cpu=True, verbose=False)
    model = torch.nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    model = acc.prepare(model, device_placement=[False])
    rank = acc.process_index
    x = torch.full((2, 3), float(rank + 1))  # different data per rank: only a synchronised gradient agrees
    acc.backward(model(x).sum())
    grads = acc.gather(acc.unwrap_model(model).weight.grad.reshape(1, -1)).tolist()
    out = {"wrapped": type(model).__name__, "grads": grads, "rank": rank}
    acc.end_training()
    return out


def slurm() -> dict[str, object]:
    """Defect 11: under `srun` (SLURM variables, no MASTER_ADDR) the process group still forms."""
    acc = Accelerator(cpu=True, verbose=False)
    total = acc.reduce(torch.tensor([float(acc.process_index + 1)]), "sum").item()
    out = {"world": acc.num_processes, "rank": acc.process_index, "source": acc.process.source, "sum": total,
           "backend": dist.get_backend()}
    acc.end_training()
    return out


if __name__ == "__main__":
    out_dir, check = Path(sys.argv[1]), sys.argv[2]
    result = {"placement_off": placement_off, "slurm": slurm}[check]()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{check}-rank{result['rank']}.json").write_text(json.dumps(result))
