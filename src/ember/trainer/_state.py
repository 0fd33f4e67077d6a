"""The Trainer's small pieces of state: where the loop is, and what the Trainer is doing."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LoopState:
    """Loop counters saved in checkpoints (``trainer.json``) and restored on resume."""

    epoch: int = 0
    batch_idx: int = 0  # training batches done in the current epoch
    batches_that_stepped: int = 0  # training batches that ended with an optimizer step (the logging step)
    total_batches: int = 0  # training batches over the whole fit
    epoch_finished: bool = False
    resume_batches: int | None = None  # set on resume: the epoch continues after this many batches
    log_step: int = 0  # the step index loggers get (Lightning: the optimizer step the current batch belongs to)
    is_last_batch: bool = False  # the training batch being processed is the epoch's last (Lightning's flag)
    window_has_grads: bool = False  # a backward ran since the last zero_grad (not saved: saves happen at boundaries)

    def state_dict(self) -> dict[str, int | bool]:
        return {
            "epoch": self.epoch, "batch_idx": self.batch_idx, "batches_that_stepped": self.batches_that_stepped,
            "total_batches": self.total_batches, "epoch_finished": self.epoch_finished,
        }


@dataclass
class TrainerState:
    """``fn``: the entry point running ("fit", "validate", "test", "predict"); ``stage``: the loop running
    ("train", "sanity_check", "validate", "test", "predict"); ``status``: "initializing", "running",
    "finished", "interrupted" or "failed"."""

    fn: str | None = None
    stage: str | None = None
    status: str = "initializing"
