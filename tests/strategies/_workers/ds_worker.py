"""One 2-process launch for the DeepSpeed checks that need real ranks (see tests/strategies/test_deepspeed.py).

Usage: ``ember launch --cpu --num_processes 2 ds_worker.py OUT``. Writes per rank ``OUT/rank{r}.json`` (losses, norms,
counted bytes, checkpoint listings) and ``OUT/rank{r}.safetensors`` (final weights of every run).

1. DDP and ZeRO-1/2/3 train the same block for 12 steps (accumulation 2, clipping at 1.0), with the Accelerator loop
   and with the Trainer; the test compares every run with DDP.
2. Trainer ZeRO-3: fit, test, then save_checkpoint on both ranks (a save after test must not hang).
3. The ZeRO-3 export (save_model) gathers the full weights into one safetensors file.
4. Memory, counted: bytes of parameters, gradients and optimizer state held per rank (bf16, DDP vs ZeRO-2/3).
5. ``zero3_init_flag``: built partitioned, trains as the same model built whole.
6. A short last accumulation window (5 micro-batches per step, 24 per rank): rescaled inside DeepSpeed's partitions.
7. Skipped steps: ``nonfinite="skip"`` with a NaN loss on one rank (ZeRO-2 against DDP), and DeepSpeed's own fp16
   overflow skips, counted by ember.
8. Untrusted files: a pickle payload planted in each file of a ZeRO-2 checkpoint (manifest fixed to match) and a
   flipped byte; every load attempt's error is recorded per rank, and whether the payload ran.
9. The never-killed reference of the kill/resume test: tests/faults/_workers/fault_worker.py under ZeRO-2, as
   ``ember launch --config_file`` (distributed_type DEEPSPEED, zero_stage 2) would run it.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ACCUM, BATCH, CLIP, LR, dataset, loss_fn, make_model

import ember as L
from ember import Accelerator, DeepSpeedStrategy
from ember.callbacks import Callback

STRATEGIES = ["ddp", "deepspeed_stage_1", "deepspeed_stage_2", "deepspeed_stage_3"]


def accelerator_run(strategy: str, out: Path, accum: int = ACCUM) -> dict[str, Any]:
    acc = Accelerator(cpu=True, strategy=strategy, gradient_accumulation_steps=accum, verbose=False, seed=0)
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)
    model, opt, loader, sched = acc.prepare(model, opt, DataLoader(dataset(), batch_size=BATCH), sched)
    losses, norms = [], []
    for x, y in loader:
        with acc.accumulate(model):
            loss = loss_fn(model, x, y)
            acc.backward(loss)
            losses.append(loss.item())
            if acc.sync_gradients:
                norms.append(float(acc.clip_grad_norm_(model.parameters(), CLIP)))
            opt.step()
            sched.step()
            opt.zero_grad()
    weights = acc.get_state_dict(model)
    result = {"losses": losses, "norms": norms, "steps": acc.step, "lr": sched.get_last_lr()[0],
              "weights": {k: v.clone() for k, v in weights.items()}}
    if strategy == "deepspeed_stage_3" and accum == ACCUM:
        path = acc.save_model(model, out / "export")  # gathered from both ranks' partitions
        result["export"] = str(path)
    return result


def zero3_init_run() -> dict[str, Any]:
    """Accelerate's ``zero3_init_flag``: the model is built already partitioned, then trains as before."""
    from ember import DeepSpeedPlugin

    acc = Accelerator(cpu=True, deepspeed_plugin=DeepSpeedPlugin(zero_stage=3, zero3_init_flag=True,
                                                                  gradient_accumulation_steps=ACCUM),
                      verbose=False, seed=0)
    with acc.strategy.module_init_context():
        model = make_model()
    built = {"held": sum(p.ds_tensor.numel() for p in model.parameters()),
             "full": sum(p.ds_numel for p in model.parameters()), "visible": sum(p.numel() for p in model.parameters())}
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)  # as in accelerator_run
    model, opt, loader, sched = acc.prepare(model, opt, DataLoader(dataset(), batch_size=BATCH), sched)
    losses = []
    for x, y in loader:
        with acc.accumulate(model):
            loss = loss_fn(model, x, y)
            acc.backward(loss)
            losses.append(loss.item())
            if acc.sync_gradients:
                acc.clip_grad_norm_(model.parameters(), CLIP)
            opt.step()
            sched.step()
            opt.zero_grad()
    return {"built": built, "losses": losses, "steps": acc.step}


class Recorder(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.losses.append(float(outputs["loss"]))


class Net(L.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = make_model()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return loss_fn(self.net, *batch)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.log("test_loss", loss_fn(self.net, *batch))

    def configure_optimizers(self) -> Any:
        return torch.optim.AdamW(self.parameters(), lr=LR)


def trainer_run(strategy: str, out: Path) -> dict[str, Any]:
    recorder = Recorder()
    trainer = L.Trainer(accelerator="cpu", strategy=strategy, max_epochs=1, accumulate_grad_batches=ACCUM,
                        gradient_clip_val=CLIP, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[recorder], seed=0, default_root_dir=out / "trainer")
    module = Net()
    trainer.fit(module, DataLoader(dataset(), batch_size=BATCH))
    weights = trainer.accelerator.get_state_dict(module)
    result: dict[str, Any] = {"losses": recorder.losses, "steps": trainer.global_step,
                              "weights": {k.removeprefix("net."): v.clone() for k, v in weights.items()}}
    if strategy == "deepspeed_stage_3":  # fit, test, then save on every rank: no hang, a complete checkpoint
        tested = trainer.test(module, DataLoader(dataset(), batch_size=BATCH), verbose=False)
        path = trainer.save_checkpoint(out / "after-test")
        result["after_test"] = {"test_loss": tested[0]["test_loss"], "files": sorted(p.name for p in path.iterdir())}
    return result


# --------------------------------------------------------------------------------------------------------------
# memory, counted: the distinct storages each rank holds for parameters, gradients and optimizer state
# --------------------------------------------------------------------------------------------------------------
def _tensors(value: Any, depth: int = 0) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if depth > 3:
        return []
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v, depth + 1)]
    return []


def _bytes(tensors: list[torch.Tensor], seen: set[int]) -> int:
    total = 0
    for t in tensors:
        storage = t.untyped_storage()
        if storage.nbytes() and storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def held_bytes(acc: Accelerator, model: Any, opt: Any) -> dict[str, int]:
    """Optimizer state (the optimizer's own state tensors), and everything held for training: parameters (with
    ZeRO-3's partitions and the fp32 master copies), gradients and every buffer of the ZeRO optimizer."""
    module, base = acc.unwrap_model(model), opt.optimizer
    seen: set[int] = set()
    state = _bytes(_tensors([dict(s) for s in base.state.values()]), seen)
    params = [p.data for p in module.parameters()] + [p.ds_tensor for p in module.parameters() if hasattr(p, "ds_tensor")]
    held = state + _bytes(params, seen) + _bytes([p.grad for p in module.parameters() if p.grad is not None], seen)
    engine = getattr(model, "engine", None)
    if engine is not None:  # every tensor the ZeRO optimizer keeps (masters, gradient partitions, buckets)
        held += _bytes(_tensors(list(vars(engine.optimizer).values())), seen)
    return {"optimizer_state": state, "total": held}


def memory_run(strategy: str) -> dict[str, int]:
    chosen: Any = strategy
    if strategy != "ddp":  # small communication buckets: a tiny model would otherwise be dwarfed by them
        chosen = DeepSpeedStrategy(stage=int(strategy[-1]), reduce_bucket_size=500, allgather_bucket_size=500, config={
            "zero_optimization": {"stage3_param_persistence_threshold": 0, "stage3_prefetch_bucket_size": 500}})
    acc = Accelerator(cpu=True, strategy=chosen, mixed_precision="bf16", verbose=False, seed=0)
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    model, opt, loader = acc.prepare(model, opt, DataLoader(dataset(), batch_size=BATCH))
    batches = iter(loader)
    for _ in range(2):  # a step (the optimizer state exists), then gradients of the next step
        acc.backward(loss_fn(model, *next(batches)))
        counted = held_bytes(acc, model, opt)
        opt.step()
        opt.zero_grad()
    return counted


def skip_run(strategy: str, precision: str = "no", nonfinite: str = "off") -> dict[str, Any]:
    """12 windows of 2 micro-batches; micro-batch 5 has a NaN loss on rank 1 (``nonfinite="skip"``) or, under fp16,
    a loss 1e8 times too large (an overflow DeepSpeed skips)."""
    acc = Accelerator(cpu=True, strategy=strategy, gradient_accumulation_steps=ACCUM, verbose=False, seed=0,
                      mixed_precision=precision, nonfinite=nonfinite)
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    model, opt, loader = acc.prepare(model, opt, DataLoader(dataset(), batch_size=BATCH))
    skipped_at = []
    for i, (x, y) in enumerate(loader):
        with acc.accumulate(model):
            loss = loss_fn(model, x, y)
            if i == 5 and (precision == "fp16" or acc.process_index == 1):
                loss = loss * (1e8 if precision == "fp16" else float("nan"))
            acc.backward(loss)
            opt.step()
            opt.zero_grad()
        if acc.sync_gradients and acc.optimizer_step_was_skipped:
            skipped_at.append(i)
    engine = getattr(model, "engine", None)
    return {"steps": acc.step, "skipped": acc.skipped_steps, "skipped_at": skipped_at,
            "engine_skipped": None if engine is None else int(engine.skipped_steps),
            "weights": {k: v.float().clone() for k, v in acc.get_state_dict(model).items()}}


class Payload:
    """Unpickling this creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (Path.touch, (self.marker,))


def _plant(src: Path, dst: Path, name: str, data: bytes | None) -> None:
    """Rank 0: copy the checkpoint, replace ``name`` (``data``) or flip one byte in it (None)."""
    shutil.copytree(src, dst)
    target = dst / name
    if data is None:
        raw = bytearray(target.read_bytes())
        raw[-3] ^= 0x01
        target.write_bytes(bytes(raw))
        return
    target.write_bytes(data)  # the attacker controls the directory: the manifest is made to match
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (dst / "manifest.json").write_text(json.dumps(manifest))


def untrusted_run(out: Path) -> dict[str, Any]:
    acc = Accelerator(cpu=True, strategy="deepspeed_stage_2", project_dir=out / "untrusted", verbose=False, seed=0)
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    model, opt = acc.prepare(model, opt)
    x, y = dataset()[:BATCH]
    acc.backward(loss_fn(model, x, y))
    opt.step()
    saved = acc.save_state()
    marker = out / "pwned"
    payload = pickle.dumps(Payload(marker), protocol=4)
    files = sorted(f for f in json.loads((saved / "manifest.json").read_text())["files"]
                   if f != "README.md")  # README.md is for people: ember never reads it
    errors: dict[str, str] = {}
    for i, name in enumerate([*files, "flip:optimizer.zero-rank1.safetensors"]):
        dst = out / f"planted-{i}"
        if acc.is_main_process:
            _plant(saved, dst, name.removeprefix("flip:"), None if name.startswith("flip:") else payload)
        acc.wait_for_everyone()
        try:
            acc.load_state(dst)
            errors[name] = "loaded"
        except Exception as exc:  # every rank raises: its own error, or that another rank failed
            errors[name] = f"{type(exc).__name__}: {exc}"
    return {"files": files, "errors": errors, "payload_ran": marker.exists()}


def fault_reference(out: Path) -> None:
    """The fault worker's Accelerator run under ZeRO-2, configured as the launcher's YAML would configure it."""
    import importlib.util

    os.environ["EMBER_STRATEGY"] = "deepspeed"
    os.environ["EMBER_STRATEGY_CONFIG"] = json.dumps({"zero_stage": 2})
    spec = importlib.util.spec_from_file_location(
        "fault_worker", Path(__file__).resolve().parents[2] / "faults" / "_workers" / "fault_worker.py")
    assert spec is not None and spec.loader is not None
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    worker.main([str(out), "--save-every", "1"])


def main(out: Path) -> None:
    rank = int(os.environ["RANK"])
    results: dict[str, Any] = {}
    tensors: dict[str, torch.Tensor] = {}
    start = time.monotonic()
    for strategy in STRATEGIES:
        for layer, run in (("acc", accelerator_run), ("trainer", trainer_run)):
            got = run(strategy, out)
            got["seconds"] = time.monotonic() - start
            for k, v in got.pop("weights").items():
                tensors[f"{layer}.{strategy}.{k}"] = v.detach().float().contiguous()
            results[f"{layer}.{strategy}"] = got
    results["memory"] = {s: memory_run(s) for s in ("ddp", "deepspeed_stage_2", "deepspeed_stage_3")}
    results["seconds_memory"] = time.monotonic() - start
    results["zero3_init"] = zero3_init_run()
    for strategy in ("ddp", "deepspeed_stage_2", "deepspeed_stage_3"):  # 24 micro-batches in windows of 5: the
        got = accelerator_run(strategy, out, accum=5)  # last window holds 4 and is rescaled by 5/4
        for k, v in got.pop("weights").items():
            tensors[f"partial.{strategy}.{k}"] = v.detach().float().contiguous()
        results[f"partial.{strategy}"] = got
    for name, args in (("ddp", ("ddp", "no", "skip")), ("zero2", ("deepspeed_stage_2", "no", "skip")),
                       ("fp16", ("deepspeed_stage_2", "fp16"))):
        got = skip_run(*args)
        for k, v in got.pop("weights").items():
            tensors[f"skip.{name}.{k}"] = v.contiguous()
        results[f"skip.{name}"] = got
    results["untrusted"] = untrusted_run(out)
    results["seconds_untrusted"] = time.monotonic() - start
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps(results))
    save_file(tensors, out / f"rank{rank}.safetensors")
    fault_reference(out / "fault-reference")  # last: it turns on deterministic algorithms and ends training
    print(f"[ds_worker] rank {rank}: {results['seconds_untrusted']:.1f}s, then the fault reference until "
          f"{time.monotonic() - start:.1f}s", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
