"""One resumable training script for every fault test; faults are injected by flags.

    python fault_worker.py OUT [--layer accelerator|trainer] [--kill backward@13,epoch@1:1] [--ckpt-fault ...]

It auto-resumes from OUT/checkpoints (``accelerator.load_state()`` with no path), so rerunning the same command
after a crash continues the run. Every injected fault fires once: a marker file under OUT/markers is written
(and fsynced) right before it fires, so a replayed micro-batch after a resume does not fire it again.

Written to OUT, per rank r:
  losses-rank{r}.txt    "<micro-batch index> <loss.hex()>" per micro-batch; truncated back to the checkpoint on
                        resume, so after any number of crashes it must equal the never-killed run's file
  final-rank{r}.safetensors / result-rank{r}.json   parameters and counters at the end
  preempted-rank{r}.json                            step saved when stopping on a preemption signal

Fault flags (MICRO = micro-batch index, counted from 0 over the whole run; RANK defaults to 0):
  --kill PHASE@N[:RANK],...    SIGKILL at PHASE: backward@MICRO (after backward, before optimizer.step),
                               step@MICRO (after the step, before a save), save@MICRO (right after the save
                               that follows micro-batch MICRO), epoch@EPOCH (after that epoch's end-of-epoch save)
  --ckpt-fault KIND@STEP[:K][:RANK]   during the save at accelerator.step == STEP: write (SIGKILL half-way
                               through the K-th file write), enospc (the K-th write fails with ENOSPC),
                               manifest (SIGKILL half-way through manifest.json), rename (SIGKILL before the
                               directory is renamed into place), latest (SIGKILL after the rename, before
                               `latest` is updated), retention (SIGKILL while deleting an old checkpoint)
  --signal SIGNAME@MICRO[:RANK]   the rank sends itself SIGNAME after backward of MICRO (--handle-signals)
  --nan MICRO[:RANK]           the loss of MICRO is NaN on RANK;  --stall MICRO[:RANK]: RANK sleeps forever there
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch.utils.data import DataLoader, TensorDataset


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    p.add_argument("--layer", default="accelerator", choices=["accelerator", "trainer"])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--items", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--accum", type=int, default=3)
    p.add_argument("--save-every", type=int, default=2)
    p.add_argument("--keep-last", type=int, default=None)
    p.add_argument("--kill", default="")
    p.add_argument("--ckpt-fault", default="")
    p.add_argument("--signal", default="")
    p.add_argument("--nan", default="")
    p.add_argument("--stall", default="")
    p.add_argument("--nonfinite", default="off")
    p.add_argument("--timeout", type=float, default=None)
    p.add_argument("--handle-signals", action="store_true")
    p.add_argument("--precision", default=None)
    p.add_argument("--strategy", default="auto", help="any registered strategy name (ddp, fsdp, deepspeed_stage_2)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda: one GPU per rank (not exact)")
    p.add_argument("--step-sleep", type=float, default=0.0, help="seconds of sleep per micro-batch")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------------------
# the problem: data, model, a registered loop counter
# ----------------------------------------------------------------------------------------------------------
def dataset(items: int) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(items, 8, generator=g)
    y = x @ torch.randn(8, generator=g) + 0.1 * torch.randn(items, generator=g)
    return TensorDataset(x, y)


def build_model() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(16, 1)
    )


def micro_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    noise = (random.random() + float(np.random.rand())) * 1e-3  # every RNG stream matters for exact resume
    return F.mse_loss(model(x).squeeze(-1), y + noise)


class LoopState:
    """Registered for checkpointing: how many micro-batches this run has done."""

    def __init__(self) -> None:
        self.micro = 0

    def state_dict(self) -> dict[str, Any]:
        return {"micro": self.micro}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.micro = int(state["micro"])


# ----------------------------------------------------------------------------------------------------------
# fault injection
# ----------------------------------------------------------------------------------------------------------
def _spec(text: str) -> list[tuple[str, int, list[int]]]:
    """"kind@N[:a][:b],..." -> [(kind, N, [a, b])]; for --nan/--stall "N[:rank]" -> [("", N, [rank])]."""
    out = []
    for part in filter(None, text.split(",")):
        kind, _, rest = part.rpartition("@") if "@" in part else ("", "", part)
        nums = [int(v) for v in rest.split(":")]
        out.append((kind, nums[0], nums[1:]))
    return out


class Faults:
    def __init__(self, args: argparse.Namespace, rank: int) -> None:
        self.args, self.rank = args, rank
        self.markers = args.out / "markers"
        self.markers.mkdir(parents=True, exist_ok=True)
        self.saving_step: int | None = None  # accelerator.step of the save in progress
        self.writes = 0

    def once(self, name: str) -> bool:
        """True the first time ``name`` is asked for across every run in OUT (the marker is durable first)."""
        marker = self.markers / name
        if marker.exists():
            return False
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT, 0o644)
        os.fsync(fd)
        os.close(fd)
        return True

    def die(self, why: str) -> None:
        print(f"[fault_worker] rank {self.rank}: SIGKILL {why}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    def point(self, phase: str, n: int) -> None:
        for kind, at, rest in _spec(self.args.kill):
            rank = rest[0] if rest else 0
            if (kind, at, rank) == (phase, n, self.rank) and self.once(f"kill-{kind}-{at}-{rank}"):
                self.die(f"at {phase}@{n}")
        for kind, at, rest in _spec(self.args.signal):
            rank = rest[0] if rest else 0
            if phase == "backward" and (at, rank) == (n, self.rank) and self.once(f"signal-{kind}-{at}-{rank}"):
                print(f"[fault_worker] rank {self.rank}: sending itself {kind} at micro {n}", flush=True)
                os.kill(os.getpid(), signal.Signals[kind])

    def stall(self, n: int) -> None:
        for _, at, rest in _spec(self.args.stall):
            if (at, rest[0] if rest else 0) == (n, self.rank):
                print(f"[fault_worker] rank {self.rank}: stalling at micro {n}", flush=True)
                while True:
                    time.sleep(3600)

    def nan(self, n: int) -> bool:
        return any((at, rest[0] if rest else 0) == (n, self.rank) for _, at, rest in _spec(self.args.nan))

    def ckpt_fault(self, kind: str) -> tuple[int, int] | None:
        """(K, rank) of a --ckpt-fault of this kind for the save in progress, if it targets this rank."""
        for k, step, rest in _spec(self.args.ckpt_fault):
            if kind in ("write", "enospc"):
                nth, rank = (rest[0] if rest else 1), (rest[1] if len(rest) > 1 else 0)
            else:
                nth, rank = 0, (rest[0] if rest else 0)
            if k == kind and step == self.saving_step and rank == self.rank:
                return nth, rank
        return None

    def patch_engine(self) -> None:
        """Wrap private functions of ember.checkpoint to crash at exact points of a save (test harness only)."""
        if not self.args.ckpt_fault:
            return
        from ember.checkpoint import _discovery, _fsio, _store

        def wrap(module: Any, name: str, before: Callable[..., None]) -> None:
            original = getattr(module, name)

            def patched(*a: Any, **kw: Any) -> Any:
                before(*a, **kw)
                return original(*a, **kw)

            setattr(module, name, patched)

        write_all = _fsio._write_all

        def counted_write(fd: int, data: memoryview) -> None:
            if self.saving_step is None:
                return write_all(fd, data)
            self.writes += 1
            for kind in ("write", "enospc"):
                hit = self.ckpt_fault(kind)
                if hit and hit[0] == self.writes and self.once(f"ckpt-{kind}-{self.saving_step}-{hit[0]}-{hit[1]}"):
                    if kind == "enospc":
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                    write_all(fd, data[: len(data) // 2])
                    self.die(f"half-way through write {self.writes} of the save at step {self.saving_step}")
            return write_all(fd, data)

        _fsio._write_all = counted_write

        def kill_if(kind: str) -> Callable[..., None]:
            def before(*a: Any, **kw: Any) -> None:
                if kind == "manifest" and not kw.get("manifest"):
                    return
                if kind == "retention" and not Path(a[0]).name.startswith(".del-"):
                    return
                if self.ckpt_fault(kind) and self.once(f"ckpt-{kind}-{self.saving_step}"):
                    if kind == "manifest":
                        fd = os.open(Path(a[0]) / "manifest.json", os.O_WRONLY | os.O_CREAT, 0o644)
                        os.write(fd, b'{"format_version": 1, "fi')
                        os.close(fd)
                    self.die(f"at {kind} of the save at step {self.saving_step}")

            return before

        wrap(_store, "write_member", kill_if("manifest"))
        wrap(_store, "_swap_into_place", kill_if("rename"))
        wrap(_store, "write_latest", kill_if("latest"))
        wrap(_discovery, "remove_tree", kill_if("retention"))


# ----------------------------------------------------------------------------------------------------------
# outputs
# ----------------------------------------------------------------------------------------------------------
class LossLog:
    """Per-rank loss history; on resume, lines of micro-batches at or after the checkpoint are dropped."""

    def __init__(self, out: Path, rank: int, resume_micro: int) -> None:
        self.path = out / f"losses-rank{rank}.txt"
        kept = []
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[0].isdigit() and int(parts[0]) < resume_micro:
                    kept.append(line + "\n")
        self.path.write_text("".join(kept))
        self.file = open(self.path, "a", buffering=1)  # noqa: SIM115 - open for the whole run

    def write(self, micro: int, loss: torch.Tensor) -> None:
        self.file.write(f"{micro} {float(loss.detach()).hex()}\n")


def write_results(out: Path, rank: int, state: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    """``state``: the strategy's full state dict (every rank calls get_state_dict; sharded strategies fill rank 0)."""
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, out / f"final-rank{rank}.safetensors")
    (out / f"result-rank{rank}.json").write_text(json.dumps(info))


# ----------------------------------------------------------------------------------------------------------
# the Accelerator layer: a plain user loop
# ----------------------------------------------------------------------------------------------------------
def run_accelerator(args: argparse.Namespace) -> None:
    from ember import Accelerator

    acc = Accelerator(
        cpu=args.device == "cpu", seed=0, gradient_accumulation_steps=args.accum, project_dir=args.out, verbose=False,
        handle_signals=args.handle_signals, nonfinite=args.nonfinite, timeout=args.timeout,
        mixed_precision=args.precision, strategy=args.strategy,
    )
    torch.use_deterministic_algorithms(True)
    rank = acc.process_index
    faults = Faults(args, rank)
    faults.patch_engine()
    model = build_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.02)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
    loader = DataLoader(dataset(args.items), batch_size=args.batch_size, shuffle=True)
    model, optimizer, loader, scheduler = acc.prepare(model, optimizer, loader, scheduler)
    loop = LoopState()
    acc.register_for_checkpointing(loop)
    resumed = acc.load_state()  # newest complete checkpoint, or None on a fresh start
    print(f"[fault_worker] rank {rank}: start at step {acc.step} (resumed from {resumed})", flush=True)
    log = LossLog(args.out, rank, loop.micro)
    last_saved = acc.step if resumed is not None else -1

    def save() -> None:
        nonlocal last_saved
        faults.saving_step, faults.writes = acc.step, 0
        acc.save_state(keep_last=args.keep_last)
        faults.saving_step, last_saved = None, acc.step

    while loader.state.epoch < args.epochs:
        for x, y in loader:
            m = loop.micro
            with acc.accumulate(model):
                faults.stall(m)
                time.sleep(args.step_sleep)
                loss = micro_loss(model, x, y)
                if faults.nan(m):
                    loss = loss * float("nan")
                acc.backward(loss)
                log.write(m, loss)
                loop.micro += 1
                faults.point("backward", m)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            if not acc.sync_gradients:
                continue
            faults.point("step", m)
            if acc.step % args.save_every == 0 and acc.step != last_saved:
                save()
                faults.point("save", m)
            if acc.preempted():
                save()
                (args.out / f"preempted-rank{rank}.json").write_text(json.dumps({"step": acc.step}))
                acc.exit_preempted()
        if acc.step != last_saved:
            save()
        faults.point("epoch", loader.state.epoch - 1)
    write_results(args.out, rank, acc.get_state_dict(model),
                  {"step": acc.step, "skipped": acc.skipped_steps, "micro": loop.micro})
    acc.end_training()


# ----------------------------------------------------------------------------------------------------------
# the Trainer layer: the same run as an ember.Module, checkpoints by ModelCheckpoint, fit(ckpt_path="last")
# ----------------------------------------------------------------------------------------------------------
def run_trainer(args: argparse.Namespace) -> None:
    import ember as L
    from ember.callbacks import Callback, ModelCheckpoint
    from ember.trainer import _checkpoint

    rank = int(os.environ.get("RANK", "0"))
    faults = Faults(args, rank)
    faults.patch_engine()
    micro = {"m": -1}
    log: list[LossLog] = []

    class Net(L.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = build_model()

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            faults.stall(micro["m"])
            time.sleep(args.step_sleep)
            loss = micro_loss(self.net, x, y)
            return loss * float("nan") if faults.nan(micro["m"]) else loss

        def configure_optimizers(self) -> Any:
            optimizer = torch.optim.AdamW(self.parameters(), lr=0.02)
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    class Faulty(Callback):
        def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
            micro["m"] = int(trainer.current_epoch * trainer.num_training_batches + batch_idx)
            if not log:  # first batch of this process: drop the history from here on
                log.append(LossLog(args.out, rank, micro["m"]))

        def on_after_backward(self, trainer: Any, module: Any) -> None:
            faults.point("backward", micro["m"])

        def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            log[0].write(micro["m"], outputs["loss"])
            if trainer.accelerator.sync_gradients:
                faults.point("step", micro["m"])  # checkpoint callbacks run after this one

        def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
            faults.point("epoch", trainer.current_epoch)

    real_save = _checkpoint.save

    def save(t: Any, path: Path) -> Path:
        faults.saving_step, faults.writes = t.accelerator.step, 0
        out = real_save(t, path)
        faults.saving_step = None
        faults.point("save", micro["m"])
        return out

    _checkpoint.save = save
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=args.epochs, accumulate_grad_batches=args.accum, seed=0, deterministic=True,
        strategy=args.strategy,
        default_root_dir=args.out, logger=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, handle_signals=args.handle_signals, nonfinite=args.nonfinite, timeout=args.timeout,
        callbacks=[Faulty(), ModelCheckpoint(
            dirpath=args.out / "checkpoints", every_n_train_steps=args.save_every,
            save_top_k=-1 if args.keep_last is None else args.keep_last, save_last=args.keep_last is None,
        )],
    )
    module = Net()
    loader = DataLoader(dataset(args.items), batch_size=args.batch_size, shuffle=True)
    trainer.fit(module, loader, ckpt_path="last")
    print(f"[fault_worker] rank {rank}: trainer finished at step {trainer.global_step}", flush=True)
    state = trainer.accelerator.get_state_dict(module)
    write_results(args.out, rank, {k.removeprefix("net."): v for k, v in state.items()},
                  {"step": trainer.global_step, "epoch": trainer.current_epoch})


def main(argv: list[str]) -> None:
    args = parse(argv)
    if args.layer == "trainer":
        run_trainer(args)
    else:
        run_accelerator(args)


if __name__ == "__main__":
    main(sys.argv[1:])
