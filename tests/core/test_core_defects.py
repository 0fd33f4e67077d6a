"""Regression tests for the core defects found in review (issue: "the core made right"), one per defect, named
after it. Each fails on the code before the fix. Defects 2-6 and 9 live with the trainer and data tests."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import ember as L
from ember import Accelerator, ProcessInfo
from ember.strategies import SingleDeviceStrategy

WORKERS = Path(__file__).parent / "_workers"


def _acc(**kwargs: Any) -> Accelerator:
    return Accelerator(cpu=True, process=ProcessInfo(), verbose=False, **kwargs)


def test_defect1_device_placement_false_still_synchronises_gradients(tmp_path: Path, tools: Any) -> None:
    """prepare(model, device_placement=[False]) used to skip the strategy: no DDP, unsynchronised gradients."""
    tools.run([*tools.EMBER, "launch", "--cpu", "--num_processes", "2", WORKERS / "defects_worker.py", tmp_path,
               "placement_off"])
    ranks = [json.loads((tmp_path / f"placement_off-rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["wrapped"] for r in ranks] == ["DistributedDataParallel"] * 2
    # rank r's gradient alone would be 2*(r+1) per weight; synchronised, both hold the mean (2 + 4) / 2 = 3
    assert ranks[0]["grads"] == ranks[1]["grads"] == [[3.0, 3.0, 3.0], [3.0, 3.0, 3.0]]


class _CountingStrategy(SingleDeviceStrategy):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict[str, Any]] = []

    def backward(self, loss: torch.Tensor, module: torch.nn.Module | None = None, **kwargs: Any) -> None:
        self.calls.append(kwargs)
        super().backward(loss, module, **kwargs)


def test_defect7_backward_kwargs_go_through_the_strategy() -> None:
    """backward(loss, **kwargs) used to call loss.backward directly, bypassing the strategy."""
    strategy = _CountingStrategy()
    acc = _acc(strategy=strategy)
    model = acc.prepare(torch.nn.Linear(2, 1))
    loss = model(torch.ones(1, 2)).sum()
    acc.backward(loss, retain_graph=True)
    acc.backward(loss)  # works only because the graph was retained: the kwarg reached Tensor.backward
    assert strategy.calls == [{"retain_graph": True}, {}]
    assert model.weight.grad.tolist() == [[2.0, 2.0]]


def test_defect7_manual_backward_positional_args_are_tensor_backward_args() -> None:
    """manual_backward(loss, *args) used to pass the first positional argument as num_items."""
    seen: list[dict[str, Any]] = []

    class Manual(L.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(2, 1, bias=False)
            self.automatic_optimization = False

        def training_step(self, batch: Any, batch_idx: int) -> None:
            opt = self.optimizers()
            loss = self.lin(batch).sum()
            self.manual_backward(loss, None, True)  # gradient=None, retain_graph=True (Tensor.backward order)
            self.manual_backward(loss)  # needs the retained graph
            seen.append({"grad": self.lin.weight.grad.tolist()})
            opt.step()
            opt.zero_grad()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.0)

    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Manual(), torch.utils.data.DataLoader(torch.ones(2, 2), batch_size=2))
    assert seen == [{"grad": [[4.0, 4.0]]}]  # two backward passes of sum over 2 rows of ones


def test_defect8_num_items_count_restarts_after_a_skipped_step() -> None:
    """nonfinite='skip' without accumulate(): a skipped step never reset the window's item count."""
    acc = _acc(nonfinite="skip")
    w = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        w.weight.fill_(1.0)
    w, opt = acc.prepare(w, torch.optim.SGD(w.parameters(), lr=1.0))
    acc.backward(w(torch.ones(3, 1)).mean() * float("inf"), num_items=3)
    opt.step()
    opt.zero_grad()
    assert acc.skipped_steps == 1
    x = torch.tensor([[2.0], [4.0]])
    acc.backward(w(x).mean(), num_items=2)  # mean over 2 items: gradient (2 + 4) / 2 = 3
    acc.unscale_gradients()
    assert w.weight.grad.item() == pytest.approx(3.0)  # with the stale count of 3 it was (2+4)/5 = 1.2
    opt.step()
    assert acc.step == 1


class _ShardedLikeStrategy(SingleDeviceStrategy):
    """Its full state dict is not the unwrapped module's (as with FSDP shards or DeepSpeed partitions)."""

    def model_state_dict(self, module: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {k: torch.full_like(v, 7.0) for k, v in self.unwrap(module).state_dict().items()}


def test_defect10_save_model_writes_the_strategys_state_dict(tmp_path: Path) -> None:
    """save_model computed the strategy's state dict, then wrote unwrap_model(model) instead."""
    acc = _acc(strategy=_ShardedLikeStrategy())
    model = acc.prepare(torch.nn.Linear(2, 1))
    path = acc.save_model(model, tmp_path / "export")
    saved = load_file(str(path))
    assert set(saved) == {"weight", "bias"} and all(bool((t == 7.0).all()) for t in saved.values())


def test_save_model_keeps_tied_weights_loadable(tmp_path: Path) -> None:
    acc = _acc()
    model = torch.nn.Sequential(torch.nn.Embedding(5, 3), torch.nn.Linear(3, 5, bias=False))
    model[1].weight = model[0].weight
    model = acc.prepare(model)
    saved = load_file(str(acc.save_model(model, tmp_path)))
    fresh = torch.nn.Sequential(torch.nn.Embedding(5, 3), torch.nn.Linear(3, 5, bias=False))
    fresh.load_state_dict(saved)  # strict: every name is in the file
    assert torch.equal(fresh[1].weight, model[0].weight)


def _free_slurm_job_id() -> str:
    """A job id whose derived port (15000 + its last 4 digits) is free on this machine now."""
    for job in range(4242, 9999, 97):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", 15000 + job))
            except OSError:
                continue
        return str(job)
    raise RuntimeError("no free port in 15000..24999")


def test_defect11_srun_starts_without_master_addr(tmp_path: Path, tools: Any) -> None:
    """`srun python train.py`: SLURM ranks were recognised, but DDP then required MASTER_ADDR."""
    env = tools.clean_env()
    env.update({"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_JOB_NODELIST": "127.0.0.1",
                "SLURM_NODEID": "0", "SLURM_JOB_ID": _free_slurm_job_id(), "CUDA_VISIBLE_DEVICES": ""})
    assert "MASTER_ADDR" not in env and "MASTER_PORT" not in env
    procs = []
    for rank in (0, 1):
        child = {**env, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)}
        procs.append(subprocess.Popen([sys.executable, WORKERS / "defects_worker.py", tmp_path, "slurm"], env=child,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    results = [json.loads((tmp_path / f"slurm-rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["world"], r["rank"], r["source"], r["sum"]) for r in results] == [(2, 0, "slurm", 3.0),
                                                                                 (2, 1, "slurm", 3.0)]
    assert {r["backend"] for r in results} == {"gloo"}


def _count_host_reads(fn: Any) -> int:
    """How many times ``fn`` reads a tensor value on the host (item / bool / tolist)."""
    count = [0]
    originals = {name: getattr(torch.Tensor, name) for name in ("item", "__bool__", "tolist")}

    def counting(name: str) -> Any:
        def wrapper(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            count[0] += 1
            return originals[name](self, *args, **kwargs)

        return wrapper

    try:
        for name in originals:
            setattr(torch.Tensor, name, counting(name))
        fn()
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
    return count[0]


def test_defect12_fp16_step_adds_no_host_sync() -> None:
    """Under fp16, skip detection cost two .item() reads per optimizer step on top of the GradScaler's own."""
    steps = 5
    x = torch.randn(4, 2)

    def raw() -> None:
        model = torch.nn.Linear(2, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
        for _ in range(steps):
            with torch.autocast("cpu", dtype=torch.float16):
                loss = model(x).float().mean()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()

    acc = _acc(mixed_precision="fp16", kwargs_handlers=[L.GradScalerKwargs(init_scale=256.0)])
    model = torch.nn.Linear(2, 1)
    model, opt = acc.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))

    def with_ember() -> None:
        for _ in range(steps):
            acc.backward(model(x).float().mean())
            opt.step()
            opt.zero_grad()

    assert _count_host_reads(with_ember) == _count_host_reads(raw)
    assert (acc.step, acc.skipped_steps) == (steps, 0)  # the lazy decisions are read here, when asked


def test_defect12_skip_decision_is_still_exact() -> None:
    """The lazily read decision still skips the overflowing step and holds the scheduler back."""
    acc = _acc(mixed_precision="fp16")
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    model, opt, sched = acc.prepare(model, opt, sched)
    acc.backward(model(torch.ones(1, 2)).float().sum() * float("inf"))
    opt.step()
    sched.step()
    assert acc.optimizer_step_was_skipped and acc.skipped_steps == 1 and sched.get_last_lr() == [0.1]
    opt.zero_grad()
    acc.backward(model(torch.ones(1, 2)).float().sum())
    opt.step()
    sched.step()
    assert not acc.optimizer_step_was_skipped and acc.step == 1 and sched.get_last_lr() == [0.05]
