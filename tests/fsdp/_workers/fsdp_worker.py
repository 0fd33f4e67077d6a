"""FSDP checks on real gloo processes. Usage: ``fsdp_worker.py OUT MODE [ARGS]``; each rank writes
``OUT/<mode>-rank{r}.json`` (numbers) and ``OUT/<mode>-rank{r}.pt`` (tensors) for the test to compare.

Modes:
  parity            DDP, FSDP (full shard) and FSDP (SHARD_GRAD_OP) through the Accelerator loop and the Trainer:
                    12 optimizer steps, accumulation 2, clipping at 1.0; losses, final weights, bytes held per rank
  hsdp              DDP and HSDP (2 x 2 mesh) on 4 processes, the Accelerator loop
  save STEP         FSDP on this world size, saving at optimizer step STEP; the sample ids seen, every loss
  resume CKPT       resume the checkpoint on this world size (global batch kept at 8) to the end of the epoch
  lowmem            cpu_ram_efficient_loading: what rank > 0 holds before and after prepare
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny import Block, TinyLM, Tokens

import ember as L
from ember import Accelerator
from ember.strategies import FSDPStrategy

ITEMS, BATCH = 96, 2  # 2 ranks x batch 2 x accumulation 2 = 8 per optimizer step: 12 steps per epoch


def strategy(name: str) -> Any:
    return {"ddp": "ddp", "fsdp": FSDPStrategy(auto_wrap_policy={Block}),
            "grad_op": FSDPStrategy(auto_wrap_policy={Block}, sharding_strategy="SHARD_GRAD_OP"),
            "hsdp": FSDPStrategy(auto_wrap_policy={Block}, sharding_strategy="HYBRID_SHARD", device_mesh=(2, 2))}[name]


def local_bytes(tensors: Any) -> int:
    total = 0
    for t in tensors:
        if isinstance(t, torch.Tensor):
            t = t.to_local() if hasattr(t, "to_local") else t
            total += t.numel() * t.element_size()
    return total


def held_bytes(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, int]:
    params = list(model.parameters())
    state = [v for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor) and v.dim() > 0]
    return {"params": local_bytes(params), "grads": local_bytes(p.grad for p in params),
            "optimizer": local_bytes(state)}


def accelerator_run(name: str, accum: int = 2) -> tuple[list[float], dict[str, torch.Tensor], dict[str, int]]:
    acc = Accelerator(cpu=True, strategy=strategy(name), gradient_accumulation_steps=accum, verbose=False)
    model = TinyLM()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model, opt, loader = acc.prepare(model, opt, DataLoader(Tokens(ITEMS), batch_size=BATCH))
    losses: list[float] = []
    for tokens, _ in loader:
        with acc.accumulate(model):
            loss = model(tokens)
            acc.backward(loss)
            acc.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad()
        losses.append(loss.item())
    assert acc.step == 12, acc.step
    acc.backward(model(next(iter(loader))[0]))  # gradients present for the count
    held = held_bytes(model, opt)
    weights = acc.get_state_dict(model)
    return losses, weights, held


class LM(L.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lm = TinyLM()
        self.losses: list[float] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self.lm(batch[0])
        self.losses.append(loss.item())
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=3e-3)


def trainer_run(name: str) -> tuple[list[float], dict[str, torch.Tensor]]:
    module = LM()
    trainer = L.Trainer(accelerator="cpu", strategy=strategy(name), max_epochs=1, accumulate_grad_batches=2,
                        gradient_clip_val=1.0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(module, DataLoader(Tokens(ITEMS), batch_size=BATCH))
    assert trainer.global_step == 12, trainer.global_step
    state = trainer.accelerator.get_state_dict(module)
    return module.losses, {k.removeprefix("lm."): v for k, v in state.items()}


def write(out: Path, mode: str, numbers: dict[str, Any], tensors: dict[str, Any]) -> None:
    rank = torch.distributed.get_rank()
    (out / f"{mode}-rank{rank}.json").write_text(json.dumps(numbers))
    torch.save(tensors, out / f"{mode}-rank{rank}.pt")


def parity(out: Path) -> None:
    numbers: dict[str, Any] = {}
    tensors: dict[str, Any] = {}
    for name in ("ddp", "fsdp", "grad_op"):
        losses, weights, held = accelerator_run(name)
        numbers[f"acc/{name}"], numbers[f"held/{name}"], tensors[f"acc/{name}"] = losses, held, weights
        losses, weights = trainer_run(name)
        numbers[f"trainer/{name}"], tensors[f"trainer/{name}"] = losses, weights
        fsdp_params = [p for p in weights.values()]
        numbers[f"dtype/{name}"] = sorted({str(p.dtype) for p in fsdp_params})
    write(out, "parity", numbers, tensors)


def hsdp(out: Path) -> None:
    numbers: dict[str, Any] = {}
    tensors: dict[str, Any] = {}
    for name, accum in (("ddp", 1), ("hsdp", 1)):  # 4 ranks x batch 2 = 8 per step
        losses, weights, held = accelerator_run(name, accum)
        numbers[name], numbers[f"held/{name}"], tensors[name] = losses, held, weights
    write(out, "hsdp", numbers, tensors)


def resumable(out: Path, world: int) -> tuple[Accelerator, Any, Any, Any]:
    acc = Accelerator(cpu=True, strategy=strategy("fsdp"), gradient_accumulation_steps=4 // world,
                      project_dir=out, verbose=False, seed=0)
    model = TinyLM()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    loader = DataLoader(Tokens(ITEMS), batch_size=BATCH, shuffle=True)
    model, opt, loader = acc.prepare(model, opt, loader)
    return acc, model, opt, loader


def train_from(acc: Accelerator, model: Any, opt: Any, loader: Any, save_at: int | None) -> dict[str, Any]:
    """Train to the end of the epoch. ``losses``: per optimizer step, the mean loss of its 8 items over all ranks
    (the same items at any world size: the global order is cut into batches dealt round-robin)."""
    seen: list[int] = []
    losses: list[list[float]] = []
    window = torch.zeros(())
    saved, seen_at_save = None, None
    for tokens, ids in loader:
        with acc.accumulate(model):
            loss = model(tokens)
            acc.backward(loss)
            opt.step()
            opt.zero_grad()
        seen.extend(ids.tolist())
        window = window + loss.detach()
        if acc.sync_gradients:
            losses.append([acc.step, acc.reduce(window / acc.gradient_accumulation_steps, "mean").item()])
            window = torch.zeros(())
            if save_at is not None and acc.step == save_at:
                saved, seen_at_save = str(acc.save_state()), len(seen)
    return {"seen": seen, "seen_at_save": seen_at_save, "losses": losses, "saved": saved, "step": acc.step}


def save(out: Path, step: int) -> None:
    acc, model, opt, loader = resumable(out, acc_world())
    numbers = train_from(acc, model, opt, loader, step)
    write(out, "save", numbers, {"weights": acc.get_state_dict(model)})


def resume(out: Path, ckpt: str) -> None:
    acc, model, opt, loader = resumable(out, acc_world())
    assert acc.load_state(ckpt) is not None
    numbers = train_from(acc, model, opt, loader, None)
    write(out, "resume", numbers, {"weights": acc.get_state_dict(model)})


def lowmem(out: Path) -> None:
    acc = Accelerator(cpu=True, strategy=FSDPStrategy(auto_wrap_policy={Block}, cpu_ram_efficient_loading=True),
                      verbose=False)
    with acc.init_module():  # rank 0 builds real weights on the CPU, the others on the meta device
        model = TinyLM()
    before = {"meta": all(p.is_meta for p in model.parameters()),
              "bytes": local_bytes(p for p in model.parameters() if not p.is_meta)}
    full = sum(p.numel() * 4 for p in TinyLM().parameters())
    model = acc.prepare(model)
    after = local_bytes(model.parameters())
    weights = acc.get_state_dict(model)
    write(out, "lowmem", {"before": before, "after": after, "full": full}, {"weights": weights})


def acc_world() -> int:
    import os

    return int(os.environ.get("WORLD_SIZE", "1"))


if __name__ == "__main__":
    out_dir, mode = Path(sys.argv[1]), sys.argv[2]
    out_dir.mkdir(parents=True, exist_ok=True)
    if mode == "parity":
        parity(out_dir)
    elif mode == "hsdp":
        hsdp(out_dir)
    elif mode == "save":
        save(out_dir, int(sys.argv[3]))
    elif mode == "resume":
        resume(out_dir, sys.argv[3])
    elif mode == "lowmem":
        lowmem(out_dir)
    else:
        raise SystemExit(f"unknown mode {mode}")
