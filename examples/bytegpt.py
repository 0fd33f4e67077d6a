"""A small byte-level GPT trained on the Python standard library's own source, for both of ember's layers.

Everything `make demo` (the Trainer), ``examples/demo_accelerator.py`` (the Accelerator) and
``examples/bytegpt.yaml`` (``ember fit``) share:

* :func:`stdlib_corpus` — the training text, built at run time from a fixed, sorted list of ``.py`` files of
  the running interpreter's standard library (``sysconfig.get_paths()["stdlib"]``): nothing is downloaded and
  the same Python gives the same bytes. The last 10% of every file is held out for validation.
* :class:`GPT` — a nanoGPT-style decoder over the 256 byte values (no tokenizer, no vocabulary to build:
  every id the model can emit decodes).
* :class:`ByteWindows` — fixed windows of ``block_size + 1`` bytes as ``{"input_ids", "labels"}`` batches
  (the progress bar and ``ThroughputMonitor`` count tokens from ``input_ids``).
* :class:`ByteGPT` (an ``ember.Module``) and :class:`StdlibData` (a data module) — what ``ember fit`` names
  by import path in ``examples/bytegpt.yaml``.
* :class:`MemoryMonitor`, :class:`TimeLeftProgressBar` and :class:`TimeBudget` — small callbacks: peak memory
  into the logs (for ``ember report``), a progress line with the time left, and a stop at an epoch end when the
  session's time budget would run out (a busy machine trains fewer epochs instead of taking longer).
"""

from __future__ import annotations

import math
import resource
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

import ember as L
from ember.callbacks import ProgressBar

VOCAB = 256  # one id per byte value


# ----------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------
def stdlib_files() -> list[Path]:
    """The standard library's top-level public modules (``*.py`` not starting with ``_``), sorted by name."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.glob("*.py") if not p.name.startswith("_") and p.is_file())


def stdlib_corpus(max_bytes: int = 1_500_000, val_fraction: float = 0.1) -> tuple[bytes, bytes]:
    """(train, val) bytes: whole files in name order until ``max_bytes``; each file's tail goes to val.

    Deterministic for a given Python: the same files, in the same order, split at the same offsets.
    """
    train, val, total = bytearray(), bytearray(), 0
    for path in stdlib_files():
        data = path.read_bytes()
        if total + len(data) > max_bytes:
            continue
        cut = int(len(data) * (1 - val_fraction))
        train += data[:cut]
        val += data[cut:]
        total += len(data)
    if len(val) < 4096:
        raise RuntimeError(f"the standard library under {sysconfig.get_paths()['stdlib']} gave too little text")
    return bytes(train), bytes(val)


class ByteWindows(Dataset[dict[str, torch.Tensor]]):
    """``count`` windows of ``block_size + 1`` bytes at evenly spread (train) or seeded random offsets.

    ``input_ids`` are the first ``block_size`` bytes, ``labels`` the next-byte targets.
    """

    def __init__(self, data: bytes, block_size: int, count: int, seed: int | None = None) -> None:
        self.data = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
        self.block_size = block_size
        last = len(self.data) - block_size - 1
        if seed is None:
            self.starts = torch.linspace(0, last, count).long()
        else:
            self.starts = torch.randint(0, last + 1, (count,), generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        s = int(self.starts[i])
        chunk = self.data[s : s + self.block_size + 1]
        return {"input_ids": chunk[:-1], "labels": chunk[1:]}


def decode(ids: list[int] | torch.Tensor) -> str:
    """Bytes → text; a byte sequence cut inside a UTF-8 character shows as U+FFFD, never an error."""
    values = ids.tolist() if isinstance(ids, torch.Tensor) else ids
    return bytes(int(v) for v in values).decode("utf-8", errors="replace")


def encode(text: str) -> torch.Tensor:
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.long)


# ----------------------------------------------------------------------------------------------------
# model
# ----------------------------------------------------------------------------------------------------
class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.n_head = n_head
        self.ln1 = nn.LayerNorm(n_embd)
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.ln2 = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd))
        self.drop = nn.Dropout(dropout)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(b, t, c)))
        return x + self.drop(self.mlp(self.ln2(x)))


class GPT(nn.Module):
    """Decoder-only transformer over bytes; ``forward(ids, labels)`` returns the mean cross-entropy."""

    def __init__(self, block_size: int = 128, n_layer: int = 4, n_head: int = 4, n_embd: int = 128,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.block_size = block_size
        self.tok = nn.Embedding(VOCAB, n_embd)
        self.pos = nn.Embedding(block_size, n_embd)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, VOCAB, bias=False)
        for name, p in self.named_parameters():
            if p.dim() > 1:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith(("proj.weight", "mlp.2.weight")) else 0.02
                nn.init.normal_(p, std=std)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.tok(input_ids) + self.pos(pos)
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))
        if labels is None:
            return logits
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())

    @torch.no_grad()
    def generate(self, ids: torch.Tensor, steps: int, temperature: float = 0.7,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        for _ in range(steps):
            logits = self(ids[:, -self.block_size :])[:, -1].float() / temperature
            nxt = torch.multinomial(logits.softmax(-1).cpu(), 1, generator=generator).to(ids.device)
            ids = torch.cat([ids, nxt], dim=1)
        return ids


def sample_text(model: GPT, prompt: str, steps: int = 200, seed: int = 0) -> str:
    """Continue ``prompt`` with ``steps`` sampled bytes (seeded: the same weights give the same text)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = model.generate(encode(prompt)[None].to(device), steps, generator=torch.Generator().manual_seed(seed))
    model.train(was_training)
    return decode(out[0])


@torch.no_grad()
def mean_loss(model: nn.Module, loader: DataLoader[Any]) -> float:
    """Mean next-byte cross-entropy of ``model`` over ``loader`` (e.g. the untrained model's, for comparison)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in loader:
        total += float(model(batch["input_ids"], batch["labels"])) * len(batch["input_ids"])
        count += len(batch["input_ids"])
    model.train(was_training)
    return total / count


# ----------------------------------------------------------------------------------------------------
# the trainer layer: module + data module
# ----------------------------------------------------------------------------------------------------
class ByteGPT(L.Module):
    """The GPT as an ``ember.Module``: AdamW, linear warm-up then cosine decay per optimizer step.

    Args:
        block_size: Context length in bytes.
        n_layer: Transformer blocks.
        n_head: Attention heads per block.
        n_embd: Width.
        dropout: Dropout in attention output and MLP.
        learning_rate: Peak learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: Linear warm-up length in optimizer steps.
    """

    def __init__(self, block_size: int = 128, n_layer: int = 4, n_head: int = 4, n_embd: int = 128,
                 dropout: float = 0.0, learning_rate: float = 2e-3, weight_decay: float = 0.05,
                 warmup_steps: int = 30) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.gpt = GPT(block_size, n_layer, n_head, n_embd, dropout)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.gpt(input_ids, labels)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self(batch["input_ids"], batch["labels"])
        self.log("train_loss", loss)  # the bar shows the loss already
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.log("val_loss", self(batch["input_ids"], batch["labels"]), prog_bar=True)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.log("test_loss", self(batch["input_ids"], batch["labels"]))

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """The most likely next byte after each window."""
        return self(batch["input_ids"])[:, -1].argmax(-1)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        decay = [p for p in self.parameters() if p.dim() > 1]
        no_decay = [p for p in self.parameters() if p.dim() <= 1]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=hp.learning_rate, betas=(0.9, 0.95),
        )
        total = max(int(min(self.trainer.estimated_stepping_batches, 1e9)), hp.warmup_steps + 1)

        def factor(step: int) -> float:
            if step < hp.warmup_steps:
                return (step + 1) / hp.warmup_steps
            progress = min(1.0, (step - hp.warmup_steps) / max(1, total - hp.warmup_steps))
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class StdlibData:
    """Data module: byte windows of the standard-library corpus (see :func:`stdlib_corpus`).

    Each training epoch draws ``train_windows`` windows at random offsets (a new draw per epoch through the
    shuffling sampler); validation uses ``val_windows`` fixed windows from the held-out tails.

    Args:
        block_size: Window length (must match the model's).
        batch_size: Windows per batch.
        train_windows: Windows in one training epoch.
        val_windows: Validation windows.
        max_bytes: Size of the corpus read from the standard library.
        seed: Seed of the window offsets.
    """

    def __init__(self, block_size: int = 128, batch_size: int = 32, train_windows: int = 6400,
                 val_windows: int = 512, max_bytes: int = 1_500_000, seed: int = 0) -> None:
        self.hparams = {"block_size": block_size, "batch_size": batch_size, "train_windows": train_windows,
                        "val_windows": val_windows, "max_bytes": max_bytes}
        self.block_size, self.batch_size = block_size, batch_size
        self.train_windows, self.val_windows = train_windows, val_windows
        self.max_bytes, self.seed = max_bytes, seed
        self._train: ByteWindows | None = None
        self._val: ByteWindows | None = None

    def setup(self, stage: str) -> None:
        if self._train is None:
            train, val = stdlib_corpus(self.max_bytes)
            self._train = ByteWindows(train, self.block_size, self.train_windows, seed=self.seed)
            self._val = ByteWindows(val, self.block_size, self.val_windows)

    def train_dataloader(self) -> DataLoader[dict[str, torch.Tensor]]:
        self.setup("fit")
        return DataLoader(self._train, batch_size=self.batch_size, shuffle=True)  # type: ignore[arg-type]

    def val_dataloader(self) -> DataLoader[dict[str, torch.Tensor]]:
        self.setup("fit")
        return DataLoader(self._val, batch_size=64)  # type: ignore[arg-type]

    test_dataloader = val_dataloader

    def predict_dataloader(self) -> DataLoader[dict[str, torch.Tensor]]:
        self.setup("predict")
        assert self._val is not None
        return DataLoader(torch.utils.data.Subset(self._val, range(8)), batch_size=4)


# ----------------------------------------------------------------------------------------------------
# callbacks
# ----------------------------------------------------------------------------------------------------
def peak_memory_mb(device: torch.device) -> dict[str, float]:
    """Peak resident memory of this process (and peak CUDA memory allocated on ``device``), in MiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    out = {"memory/peak_rss_mb": rss / (2**20 if sys.platform == "darwin" else 2**10)}
    if device.type == "cuda":
        out["memory/cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


class MemoryMonitor(L.Callback):
    """Log peak host (and GPU) memory once per training epoch, for the run report."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.Module) -> None:
        for name, value in peak_memory_mb(trainer.accelerator.device).items():
            pl_module.log(name, value, on_epoch=True)


class TimeBudget(L.Callback):
    """Stop at the end of an epoch when one more epoch would end past ``seconds`` of this session's training.

    Not saved in checkpoints: a resumed run gets a budget of its own. ``stopped_early`` tells whether it stopped.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.stopped_early = False
        self._start = time.monotonic()
        self._epochs = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.Module) -> None:
        self._start, self._epochs = time.monotonic(), 0

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.Module) -> None:
        self._epochs += 1
        elapsed = time.monotonic() - self._start
        if elapsed * (self._epochs + 1) / self._epochs > self.seconds and trainer.current_epoch + 1 < trainer.max_epochs:
            trainer.should_stop = True
            self.stopped_early = True


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


class TimeLeftProgressBar(ProgressBar):
    """ember's plain progress bar plus the time left for the whole fit (at the current pace, max_epochs)."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.Module) -> None:
        self._fit_start = time.monotonic()
        self._fit_epoch0 = trainer.current_epoch

    def _describe(self, trainer: L.Trainer, pl_module: L.Module) -> tuple[str, str]:
        title, body = super()._describe(trainer, pl_module)
        per_epoch = trainer.num_training_batches
        start = getattr(self, "_fit_start", None)
        if start is None or per_epoch == math.inf or trainer.max_epochs < 0:
            return title, body
        done = (trainer.current_epoch - self._fit_epoch0) * per_epoch + self._batches
        left = (trainer.max_epochs - trainer.current_epoch) * per_epoch - self._batches
        if done <= 0:
            return title, body
        eta = (time.monotonic() - start) / done * left
        return f"{title}/{trainer.max_epochs - 1}", f"{body}, {_clock(eta)} left"
