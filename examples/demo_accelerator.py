"""The demo's job on the core layer: the same byte-level GPT and data as `make demo`, in your own loop.

``ember.Accelerator`` adds a few lines to a plain PyTorch loop: data sharded and resumable, an LR schedule
stepped once per optimizer step, CSV + TensorBoard logs, atomic checkpoints (the last 2 kept) and automatic
resume — run it twice and the second run continues where the first stopped (``--fresh`` starts over).

    python examples/demo_accelerator.py                              # runs/demo-accelerator
    ember launch --num_processes 2 --cpu examples/demo_accelerator.py # the same on 2 processes
    ember report runs/demo runs/demo-accelerator                     # both layers side by side
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bytegpt import GPT, ByteWindows, mean_loss, peak_memory_mb, sample_text, stdlib_corpus

from ember import Accelerator


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batches", type=int, default=100, help="training batches per epoch")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--accum", type=int, default=1, help="gradient accumulation steps")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--precision", default="no", help="no | bf16 | fp16")
    p.add_argument("--project-dir", default="runs/demo-accelerator")
    p.add_argument("--small", action="store_true", help="a tiny model and short epochs (for tests)")
    p.add_argument("--fresh", action="store_true", help="delete the previous run first")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.fresh:
        shutil.rmtree(args.project_dir, ignore_errors=True)
    size = dict(n_layer=2, n_embd=64, block_size=64) if args.small else dict(n_layer=4, n_embd=128, block_size=128)
    if args.small:
        args.batches, args.batch_size = 15, 16
    accelerator = Accelerator(
        mixed_precision=args.precision,
        gradient_accumulation_steps=args.accum,
        log_with=["csv", "tensorboard"],
        project_dir=args.project_dir,
        seed=1234,
    )
    train_bytes, val_bytes = stdlib_corpus()
    block = size["block_size"]
    train = ByteWindows(train_bytes, block, args.batches * args.batch_size, seed=0)
    val = ByteWindows(val_bytes, block, 256 if args.small else 512)
    model = GPT(block_size=block, n_layer=size["n_layer"], n_head=4, n_embd=size["n_embd"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.05)
    train_dl = torch.utils.data.DataLoader(train, batch_size=args.batch_size, shuffle=True)
    val_dl = torch.utils.data.DataLoader(val, batch_size=64)
    untrained = mean_loss(model, val_dl)
    total_steps = args.epochs * math.ceil(len(train_dl) / args.accum)
    warmup = min(30, total_steps // 4)

    def factor(step: int) -> float:  # linear warm-up, then cosine down to 10%
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total_steps - warmup))))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    model, optimizer, train_dl, val_dl, scheduler = accelerator.prepare(model, optimizer, train_dl, val_dl, scheduler)
    resumed = accelerator.load_state()  # the newest complete checkpoint, or None
    # after load_state: a resumed run logs to the same run; CSV in logs/demo/version_N, events in logs/tensorboard/...
    accelerator.init_trackers("demo", config=vars(args) | size, init_kwargs={"tensorboard": {"name": "tensorboard"}})
    start_epoch = train_dl.state.epoch
    if resumed:
        accelerator.print(f"resumed from {resumed} (epoch {start_epoch}, step {accelerator.step})")
    if accelerator.is_main_process:
        from ember.cli.report import record_run

        record_run(args.project_dir, "start")
    accelerator.print(
        f"training a byte-level GPT ({sum(p.numel() for p in model.parameters()) / 1e3:.0f}k params) for "
        f"{args.epochs} epochs of {len(train_dl)} batches, {accelerator.num_processes} process(es), "
        f"{accelerator.mixed_precision}; untrained validation loss {untrained:.3f}"
    )
    last_print, interactive = time.perf_counter(), sys.stdout.isatty()
    for epoch in range(start_epoch, args.epochs):
        model.train()
        running, tokens, t0 = torch.zeros((), device=accelerator.device), 0, time.perf_counter()
        for count, batch in enumerate(train_dl, start=1):
            with accelerator.accumulate(model):
                loss = model(batch["input_ids"], batch["labels"])
                accelerator.backward(loss)
                accelerator.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            running += loss.detach()
            tokens += batch["input_ids"].numel() * accelerator.num_processes
            now = time.perf_counter()
            if (now - last_print > 0.5 and interactive) or train_dl.end_of_dataloader:  # on time, not per step
                pos = train_dl.state.batches_consumed or len(train_dl)
                bar = "#" * int(30 * pos / len(train_dl))
                rate = tokens / (now - t0)
                accelerator.print(
                    f"\repoch {epoch} [{bar:<30}] {pos}/{len(train_dl)} loss {(running / count).item():.3f} "
                    f"lr {scheduler.get_last_lr()[0]:.2e} {rate:,.0f} tok/s",
                    end="\n" if train_dl.end_of_dataloader else "", flush=True,
                )
                last_print = now
                accelerator.log({"train_loss": running / count, "lr": scheduler.get_last_lr()[0],
                                 "train/tokens_per_sec": rate}, step=accelerator.step)
        model.eval()
        losses = []
        with torch.no_grad():
            for batch in val_dl:
                logits = model(batch["input_ids"])
                per_item = torch.nn.functional.cross_entropy(
                    logits.transpose(1, 2).float(), batch["labels"], reduction="none").mean(dim=1)
                losses.append(accelerator.gather_for_metrics(per_item))
        val_loss = torch.cat(losses).mean().item()
        accelerator.log({"val_loss": val_loss, "epoch": epoch, **peak_memory_mb(accelerator.device)},
                        step=accelerator.step)
        path = accelerator.save_state(keep_last=2)
        accelerator.print(f"epoch {epoch}: val_loss {val_loss:.3f}; checkpoint {path}")

    if accelerator.is_main_process:
        from ember.cli.report import record_run

        record_run(args.project_dir, "end")
        gpt = accelerator.unwrap_model(model)
        with accelerator.autocast():
            print("sample:", sample_text(gpt, "def ", steps=120).replace("\n", " / "))
        print(f"untrained validation loss {untrained:.3f}; logs: {accelerator.get_tracker('csv').log_dir}/metrics.csv; "
              f"checkpoints: {args.project_dir}/checkpoints")
    accelerator.end_training()


if __name__ == "__main__":
    main()
