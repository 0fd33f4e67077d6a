"""`make demo`: train a small character-level GPT on CPU with ember.Accelerator.

Your own loop, plus a few ember lines: data sharded and resumable, accumulation, an LR schedule stepped
once per optimizer step, CSV logs, atomic checkpoints (kept: the last 2) and automatic resume — run it
twice and the second run continues where the first stopped (or pass --fresh).
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from tinygpt import CharDataset, GPTConfig, TinyGPT, load_corpus

from ember import Accelerator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--accum", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--project-dir", default="runs/demo")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--fresh", action="store_true", help="delete the previous run first")
    args = parser.parse_args()
    if args.fresh:
        shutil.rmtree(args.project_dir, ignore_errors=True)

    accelerator = Accelerator(
        mixed_precision=args.precision,
        gradient_accumulation_steps=args.accum,
        log_with="csv",
        project_dir=args.project_dir,
        seed=1234,
    )
    text = load_corpus()
    cfg = GPTConfig(dropout=0.1)
    train = CharDataset(text, cfg.block_size, stride=4)
    val = CharDataset(text, cfg.block_size, stride=4)
    val.starts = [s + 2 for s in val.starts[::5]]  # windows at offsets the training set never starts at
    cfg.vocab_size = max(len(train.chars), cfg.vocab_size)

    model = TinyGPT(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    train_dl = torch.utils.data.DataLoader(train, batch_size=args.batch_size, shuffle=True)
    val_dl = torch.utils.data.DataLoader(val, batch_size=32)
    total_steps = args.epochs * math.ceil(len(train_dl) / args.accum)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=total_steps + 1)
    model, optimizer, train_dl, val_dl, scheduler = accelerator.prepare(model, optimizer, train_dl, val_dl, scheduler)
    resumed = accelerator.load_state()  # newest complete checkpoint, or None
    accelerator.init_trackers("demo", config=vars(args))  # after load_state: a resumed run logs to the same run
    start_epoch = train_dl.state.epoch
    if resumed:
        accelerator.print(f"resumed from {resumed} (epoch {start_epoch}, step {accelerator.step})")
    accelerator.print(
        f"training TinyGPT ({sum(p.numel() for p in model.parameters()) / 1e3:.0f}k params) for {args.epochs} "
        f"epochs, {len(train_dl)} batches each, {accelerator.num_processes} process(es), {accelerator.mixed_precision}"
    )
    last_print, interactive = time.perf_counter(), sys.stdout.isatty()
    for epoch in range(start_epoch, args.epochs):
        model.train()
        running, t0 = torch.zeros((), device=accelerator.device), time.perf_counter()
        for count, (x, y) in enumerate(train_dl, start=1):
            with accelerator.accumulate(model):
                loss = model(x, y)
                accelerator.backward(loss)
                accelerator.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            running += loss.detach()
            now = time.perf_counter()
            due = now - last_print > 0.5 and interactive
            if due or train_dl.end_of_dataloader:  # refresh on time (or once per epoch in logs), not per step
                pos = train_dl.state.batches_consumed or len(train_dl)
                bar = "#" * int(30 * pos / len(train_dl))
                accelerator.print(
                    f"\repoch {epoch} [{bar:<30}] {pos}/{len(train_dl)} loss {(running / count).item():.3f} "
                    f"lr {scheduler.get_last_lr()[0]:.2e} {count / (now - t0):.1f} it/s",
                    end="\n" if train_dl.end_of_dataloader else "",
                    flush=True,
                )
                last_print = now
                accelerator.log({"train_loss": running / count, "lr": scheduler.get_last_lr()[0]}, step=accelerator.step)
        model.eval()
        losses = []
        with torch.no_grad():
            for x, y in val_dl:
                logits = model(x)
                per_item = torch.nn.functional.cross_entropy(
                    logits.transpose(1, 2).float(), y, reduction="none"
                ).mean(dim=1)
                losses.append(accelerator.gather_for_metrics(per_item))
        val_loss = torch.cat(losses).mean().item()
        accelerator.log({"val_loss": val_loss, "epoch": epoch}, step=accelerator.step)
        path = accelerator.save_state(keep_last=2)
        accelerator.print(f"epoch {epoch}: val_loss {val_loss:.3f}; checkpoint {path}")

    if accelerator.is_main_process:
        gpt = accelerator.unwrap_model(model)
        prompt = torch.tensor([[train.stoi[c] for c in "It was the "]], device=accelerator.device)
        with accelerator.autocast():
            sample = gpt.generate(prompt, 120)[0].tolist()
        print("sample:", train.decode(sample).replace("\n", " / "))
        print(f"logs: {accelerator.get_tracker('csv').log_dir}/metrics.csv; checkpoints: {args.project_dir}/checkpoints")
    accelerator.end_training()


if __name__ == "__main__":
    main()
