"""The Lightning snippets of the seed document, running with ember (``import ember as L``).

Run:  python examples/seed_lightning.py            (fine-tuning block, CSV logs under runs/seed_lightning)
      python examples/seed_lightning.py --logger wandb   (the seed's WandbLogger, offline)
      python examples/seed_lightning.py --production      (the "use Lightning when" Trainer: callbacks,
                                                            WandbLogger offline, profiler="advanced")

What changed from the seed, and why (nothing else did):

* ``L.LightningModule`` works as written (ember aliases it to ``L.Module``); imports come from ``ember``.
* ``AutoModelForCausalLM.from_pretrained(model_name)`` → ``AutoModelForCausalLM.from_config(config)`` with a
  tiny GPT-2 config: no download, seconds on a CPU.
* ``forward`` also passes ``labels``: the seed's forward drops them, so ``outputs.loss`` would be ``None``.
* ``get_cosine_schedule_with_warmup(optimizer, ...)`` gets real arguments
  (``num_training_steps=self.trainer.estimated_stepping_batches``).
* ``accelerator="gpu", devices=4`` → ``accelerator="cpu", devices=1`` so it runs anywhere (on a 4-GPU machine
  the seed's values work as written). ``strategy="fsdp"`` (FSDP2, here on one process), ``precision="bf16-mixed"``,
  clipping, accumulation, callbacks and the logger are the seed's.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from transformers import AutoModelForCausalLM, GPT2Config, get_cosine_schedule_with_warmup

import ember as L
from ember.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from ember.loggers import CSVLogger, WandbLogger

VOCAB, SEQ = 64, 16


def tiny_config(model_name: str) -> GPT2Config:
    """A GPT-2 small enough for a CPU test (``model_name`` only names it)."""
    return GPT2Config(vocab_size=VOCAB, n_positions=SEQ, n_embd=32, n_layer=2, n_head=2, name_or_path=model_name)


class ProgressionTokens(Dataset[dict[str, torch.Tensor]]):
    """Token sequences x_t = (a + b·t) mod V: a causal LM can learn them, so val_loss really falls."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        start = torch.randint(0, VOCAB, (n, 1), generator=g)
        step = torch.randint(1, 4, (n, 1), generator=g)
        self.ids = (start + step * torch.arange(SEQ)) % VOCAB

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = self.ids[i]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


# --- the seed's LightningModule ------------------------------------------------------------------------
class LLMFineTuner(L.LightningModule):
    def __init__(self, model_name: str, learning_rate: float = 1e-5) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = AutoModelForCausalLM.from_config(tiny_config(model_name))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None) -> Any:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        outputs = self(**batch)
        loss = outputs.loss
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        outputs = self(**batch)
        self.log("val_loss", outputs.loss, prog_bar=True)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.learning_rate)
        scheduler = get_cosine_schedule_with_warmup(
            optimizer, num_warmup_steps=2, num_training_steps=int(self.trainer.estimated_stepping_batches)
        )
        return [optimizer], [scheduler]


def fine_tune(root_dir: str = "runs/seed_lightning", logger: str = "csv", max_epochs: int = 3,
              train_size: int = 64, quiet: bool = False) -> L.Trainer:
    """The seed's "Trainer Configuration" block."""
    train_dataloader = DataLoader(ProgressionTokens(train_size, seed=0), batch_size=4, shuffle=True)
    val_dataloader = DataLoader(ProgressionTokens(16, seed=1), batch_size=8)
    model = LLMFineTuner("gpt2-tiny", learning_rate=3e-3)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        strategy="fsdp",  # or "ddp", "deepspeed_stage_2"
        precision="bf16-mixed",
        max_epochs=max_epochs,
        gradient_clip_val=1.0,
        accumulate_grad_batches=4,
        callbacks=[
            ModelCheckpoint(monitor="val_loss", mode="min"),
            EarlyStopping(monitor="val_loss", patience=3),
            LearningRateMonitor(logging_interval="step"),
        ],
        logger=(WandbLogger(project="llm-finetuning", save_dir=root_dir, offline=True) if logger == "wandb"
                else CSVLogger(root_dir, name="llm-finetuning")),
        default_root_dir=root_dir,
        log_every_n_steps=1,
        enable_progress_bar=not quiet,
        enable_model_summary=not quiet,
    )
    trainer.fit(model, train_dataloader, val_dataloader)
    return trainer


# --- "Lightning restructures into modules" and "PyTorch to Lightning" ------------------------------------
class Model(torch.nn.Module):
    """Stands in for the seed's ``Model()``: its forward returns an object with ``.loss``."""

    def __init__(self) -> None:
        super().__init__()
        self.lm = AutoModelForCausalLM.from_config(tiny_config("tiny"))

    def forward(self, batch: dict[str, torch.Tensor]) -> Any:
        return self.lm(**batch)


class MyModel(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.model = Model()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.model(batch).loss
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters())


class MyModule(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.model = AutoModelForCausalLM.from_config(tiny_config("tiny"))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.model(**batch).loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters())


def restructured(root_dir: str = "runs/seed_lightning") -> None:
    dataloader = DataLoader(ProgressionTokens(16, seed=2), batch_size=4)
    model = MyModel()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, default_root_dir=root_dir)  # seed: "gpu", 4
    trainer.fit(model, dataloader)
    module = MyModule()
    trainer = L.Trainer(max_epochs=1, default_root_dir=root_dir, profiler="advanced", logger=False)
    trainer.fit(module, dataloader)


# --- "Use Lightning When: ... Lightning is ideal for production systems" ------------------------------------
def production(root_dir: str = "runs/seed_lightning", max_epochs: int = 2) -> L.Trainer:
    """The seed's production Trainer: three callbacks, a W&B logger (offline: no account, no network) and the
    "advanced" (cProfile) profiler, whose per-hook report is printed at the end of ``fit``."""
    checkpoint = ModelCheckpoint(monitor="val_loss", mode="min")
    early_stop = EarlyStopping(monitor="val_loss", patience=3)
    lr_monitor = LearningRateMonitor(logging_interval="step")
    wandb_logger = WandbLogger(project="llm-finetuning", save_dir=root_dir, offline=True)
    # Lightning is ideal for production systems
    trainer = L.Trainer(
        callbacks=[checkpoint, early_stop, lr_monitor],
        logger=wandb_logger,
        profiler="advanced",
        max_epochs=max_epochs,  # not in the seed: L.Trainer() trains for 1000 epochs by default, as Lightning does
        default_root_dir=root_dir,  # not in the seed: keep the run's files together
    )
    train_dataloader = DataLoader(ProgressionTokens(32, seed=0), batch_size=8, shuffle=True)
    val_dataloader = DataLoader(ProgressionTokens(16, seed=1), batch_size=8)
    trainer.fit(LLMFineTuner("gpt2-tiny", learning_rate=3e-3), train_dataloader, val_dataloader)
    return trainer


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logger", choices=["csv", "wandb"], default="csv")
    parser.add_argument("--root-dir", default="runs/seed_lightning")
    parser.add_argument("--max-epochs", type=int, default=3)
    parser.add_argument("--production", action="store_true", help="only the 'use Lightning when' Trainer")
    args = parser.parse_args()
    if args.production:
        done = production(args.root_dir)
        print(f"production trainer: {done.global_step} steps; W&B run in {done.logger.save_dir}/wandb (offline)")
        raise SystemExit(0)
    trainer = fine_tune(args.root_dir, args.logger, args.max_epochs)
    print(f"best checkpoint: {trainer.checkpoint_callback.best_model_path} "
          f"(val_loss {float(trainer.checkpoint_callback.best_model_score):.4f})")
    restructured(args.root_dir)
