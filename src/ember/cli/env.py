"""``ember env``: versions and devices, for bug reports."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys


def report() -> str:
    import torch
    import torch.distributed as dist

    import ember

    lines = [
        f"ember:      {ember.__version__}",
        f"python:     {sys.version.split()[0]} ({platform.platform()})",
        f"torch:      {torch.__version__}",
        f"cpus:       {os.cpu_count()}",
        f"cuda:       {torch.cuda.is_available()} (build {torch.version.cuda})",
    ]
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        lines.append(f"  gpu {i}:    {props.name}, {props.total_memory / 2**30:.1f} GiB")
    backends = [b for b, ok in (("gloo", dist.is_gloo_available()), ("nccl", dist.is_nccl_available())) if ok]
    lines.append(f"backends:   {', '.join(backends) or 'none'}")
    extras = []
    for pkg in ("tensorboard", "wandb", "mlflow-skinny", "mlflow", "rich", "tqdm", "transformers", "deepspeed",
                "accelerate", "lightning", "safetensors", "numpy"):
        try:
            extras.append(f"{pkg}={importlib.metadata.version(pkg)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    lines.append(f"packages:   {', '.join(extras)}")
    return "\n".join(lines)
