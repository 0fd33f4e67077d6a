"""`make demo`: a byte-level GPT learns to write Python from the standard library's own source, with ember.Trainer.

About 3 minutes on 2 CPU cores. Progress with loss, tokens/s and time left; validation every epoch;
ModelCheckpoint (best + last), EarlyStopping, LearningRateMonitor; CSV and TensorBoard logs; text sampled from
the model; an HTML run report. Run it again and it resumes from the newest checkpoint (``--fresh`` starts over).

    python examples/demo.py                       # train (or resume) in runs/demo
    python examples/demo.py --epochs 12           # resume and train on to epoch 12
    python examples/demo.py --fresh               # delete runs/demo first
    ember launch --num_processes 4 examples/demo.py --accelerator gpu --precision bf16-mixed --root runs/demo-gpu
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bytegpt import (
    ByteGPT,
    MemoryMonitor,
    StdlibData,
    TimeBudget,
    TimeLeftProgressBar,
    mean_loss,
    sample_text,
)

import ember as L
from ember.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint, ThroughputMonitor
from ember.checkpoint import find_latest, load_state, read_json
from ember.loggers import CSVLogger, TensorBoardLogger

PROMPTS = ("def ", "class ", "import ")
#: --small: a model and epoch small enough for a test (seconds, not minutes)
SMALL = {"n_layer": 2, "n_embd": 64, "block_size": 64, "batches": 15, "batch_size": 16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="runs/demo", help="run directory (default: runs/demo)")
    p.add_argument("--fresh", action="store_true", help="delete the run directory first instead of resuming")
    p.add_argument("--epochs", type=int, default=8, help="max_epochs (default 8)")
    p.add_argument("--batches", type=int, default=100, help="training batches per epoch (default 100)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--accelerator", default="auto", help="auto | cpu | gpu")
    p.add_argument("--devices", default="auto", help="devices per node, or auto")
    p.add_argument("--precision", default="32-true", help="32-true | bf16-mixed | 16-mixed | ...")
    p.add_argument("--small", action="store_true", help="a tiny model and short epochs (for tests)")
    p.add_argument("--time-budget", type=float, default=170.0,
                   help="seconds of training per session: stop at the epoch end that would pass it (0: none)")
    p.add_argument("--no-report", action="store_true", help="skip the HTML report")
    return p.parse_args(argv)


def _devices(value: str) -> int | str:
    return int(value) if value.isdigit() else value


def build(args: argparse.Namespace) -> tuple[L.Trainer, ByteGPT, StdlibData, ModelCheckpoint, TimeBudget]:
    root = Path(args.root)
    size = SMALL if args.small else {"n_layer": 4, "n_embd": 128, "block_size": 128, "batches": args.batches,
                                     "batch_size": args.batch_size}
    model = ByteGPT(block_size=size["block_size"], n_layer=size["n_layer"], n_head=4, n_embd=size["n_embd"],
                    learning_rate=args.lr, warmup_steps=min(30, size["batches"]))
    data = StdlibData(block_size=size["block_size"], batch_size=size["batch_size"],
                      train_windows=size["batches"] * size["batch_size"], val_windows=256 if args.small else 512)
    checkpoint = ModelCheckpoint(dirpath=root / "checkpoints", monitor="val_loss", mode="min", save_last=True,
                                 filename="{epoch}-{step}-{val_loss:.3f}")
    budget = TimeBudget(args.time_budget if args.time_budget > 0 else float("inf"))
    trainer = L.Trainer(
        accelerator=args.accelerator,
        devices=_devices(args.devices),
        precision=args.precision,
        max_epochs=args.epochs,
        gradient_clip_val=1.0,
        log_every_n_steps=10,
        default_root_dir=root,
        seed=1234,
        callbacks=[
            checkpoint,
            EarlyStopping(monitor="val_loss", mode="min", patience=3),
            LearningRateMonitor(logging_interval="step"),
            ThroughputMonitor(),
            MemoryMonitor(),
            TimeLeftProgressBar(refresh_rate=2),
            budget,
        ],
        logger=[CSVLogger(root / "logs", name="csv"), TensorBoardLogger(root / "logs", name="tensorboard")],
        enable_model_summary=True,
    )
    return trainer, model, data, checkpoint, budget


def _resume_point(root: Path) -> Path | None:
    found = find_latest(root / "checkpoints") if (root / "checkpoints").is_dir() else None
    return found


def _epochs_done(path: Path) -> int:
    loop = load_state(path, "trainer")["loop"]
    return int(loop["epoch"]) + int(bool(loop["epoch_finished"]))


def _describe_checkpoint(path: Path) -> str:
    step = read_json(path, "manifest.json").get("step", "?")
    return f"{path} (step {step}, {_epochs_done(path)} epoch(s) done)"


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when below it, else absolute."""
    rel = os.path.relpath(path)
    return os.path.abspath(path) if rel.startswith("..") else rel


def _commands(args: argparse.Namespace) -> dict[str, str]:
    """Exact commands for what to do next, spelled with this interpreter's paths."""
    python = _shown(Path(sys.executable))
    python = python if python.startswith((".", "/")) else f"./{python}"
    bindir = os.path.dirname(python)
    here = Path(__file__).resolve().parent
    script = _shown(here / "demo.py")
    root = shlex.quote(args.root)
    return {
        "resume": f"{python} {script} --root {root}" + ("   (or: make demo)" if args.root == "runs/demo" else ""),
        "start over": f"{python} {script} --root {root} --fresh",
        "TensorBoard": f"{bindir}/tensorboard --logdir {args.root}/logs/tensorboard   (then open http://localhost:6006)",
        "same job on 4 GPUs": f"{bindir}/ember launch --num_processes 4 {script} --accelerator gpu "
                              f"--precision bf16-mixed --root {args.root}-gpu",
        "same model, core layer": f"{python} {_shown(here / 'demo_accelerator.py')}",
        "report (compare runs)": f"{bindir}/ember report {args.root} runs/demo-accelerator -o compare.html",
    }


def finish(args: argparse.Namespace, trainer: L.Trainer, model: ByteGPT, checkpoint: ModelCheckpoint,
           summary: dict[str, Any], started: float, budget: TimeBudget) -> None:
    """Rank 0: sample, write the report and say where everything is."""
    root = Path(args.root)
    best_path = checkpoint.best_model_path
    val_loss = float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else float("nan")
    summary.update(best_val_loss=val_loss, best_checkpoint=best_path, epochs=trainer.current_epoch,
                   global_step=trainer.global_step)
    gpt = model.gpt
    samples = [sample_text(gpt, prompt, steps=160, seed=i) for i, prompt in enumerate(PROMPTS)]
    (root / "samples.txt").write_text("\n\n".join(samples) + "\n", encoding="utf-8")
    (root / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    report = root / "report.html"
    if not args.no_report:
        from ember.cli.report import write_report

        write_report([root], report)
    csv_dir = Path(trainer.loggers[0].log_dir)
    tb_dir = Path(trainer.loggers[1].log_dir)
    print(f"\nDone in {time.monotonic() - started:.0f}s: best validation loss {val_loss:.3f} nats/byte "
          f"(the untrained model: {summary['untrained_val_loss']:.3f}).")
    if budget.stopped_early:
        print(f"Stopped after {trainer.current_epoch} of {args.epochs} epochs to stay within --time-budget "
              f"{args.time_budget:g}s on this machine; run the same command again to train on from there.")
    print("Text sampled from the model (prompts: " + ", ".join(repr(p) for p in PROMPTS) + "):")
    for text in samples:
        lines = [line.rstrip()[:100] for line in text.splitlines() if line.strip()][:3]
        print("  | " + "\n  | ".join(lines))
    print(f"\nEverything is in {root}/:")
    rows = [
        ("checkpoints", f"{root}/checkpoints/  (best: {Path(best_path).name or '-'}, newest: last)"),
        ("CSV metrics", f"{csv_dir}/metrics.csv"),
        ("TensorBoard", f"{tb_dir}/"),
        ("samples", f"{root}/samples.txt"),
    ]
    if not args.no_report:
        rows.append(("run report", f"{report}  (open it in a browser)"))
    for name, where in rows:
        print(f"  {name:<13}{where}")
    print("\nNext:")
    for name, command in _commands(args).items():
        print(f"  {name + ':':<25}{command}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.monotonic()
    root = Path(args.root)
    rank = int(os.environ.get("RANK", "0"))
    if args.fresh and rank == 0:
        shutil.rmtree(root, ignore_errors=True)
    resume_from = None if args.fresh else _resume_point(root)
    if hasattr(os, "getloadavg") and os.getloadavg()[0] > 1.5 * (os.cpu_count() or 1) and args.devices == "auto":
        torch.set_num_threads(1)  # on a busy machine one thread loses less time waiting for the others
        print(f"[demo] the machine is busy (load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores): "
              "training with 1 thread; it will be slower than usual")
    trainer, model, data, checkpoint, budget = build(args)
    summary_path = root / "demo.json"
    summary: dict[str, Any] = json.loads(summary_path.read_text()) if resume_from and summary_path.is_file() else {}
    if trainer.is_global_zero:
        if resume_from is not None:
            print(f"[demo] resuming from the newest checkpoint: {_describe_checkpoint(resume_from)}")
            print("[demo] (pass --fresh to start over)")
        else:
            print(f"[demo] a new run in {root}/ (run this again to resume it from its newest checkpoint)")
    if "untrained_val_loss" not in summary:
        data.setup("fit")
        summary["untrained_val_loss"] = mean_loss(model.gpt, data.val_dataloader())
    if resume_from is not None and trainer.is_global_zero and _epochs_done(resume_from) >= args.epochs:
        print(f"[demo] that run already finished its {args.epochs} epochs; pass --epochs {args.epochs + 4} "
              "to train on, or --fresh to start over")
    from ember.cli.report import record_run

    if trainer.is_global_zero:
        record_run(root, "start")
    trainer.fit(model, datamodule=data, ckpt_path="last" if resume_from is not None else None)
    if trainer.is_global_zero:
        record_run(root, "end")
        finish(args, trainer, model, checkpoint, summary, started, budget)


if __name__ == "__main__":
    main()
