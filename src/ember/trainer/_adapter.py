"""The adapter behind :meth:`ember.Module.wrap`: a plain ``nn.Module`` that returns its own loss."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader

from ember._errors import EmberConfigError, unknown_value
from ember.trainer._collate import DataCollator, loader_for
from ember.trainer.module import Module


def call_model(model: torch.nn.Module, batch: Any) -> Any:
    """``model(**batch)`` for a mapping, ``model(*batch)`` for a tuple/list, else ``model(batch)``."""
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def loss_of(output: Any) -> torch.Tensor:
    """The loss in a model output: a tensor, ``output.loss`` or ``output["loss"]``."""
    loss = output if isinstance(output, torch.Tensor) else (
        output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None))
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise EmberConfigError(
            f"Module.wrap: the model returned {_describe(output)}, not a loss. Its forward must "
            "return a scalar loss, or an object/dict with `loss` (for Hugging Face models, put `labels` in "
            "the batch)."
        )
    return loss


def _is_built_scheduler(obj: Any) -> bool:
    return isinstance(obj, torch.optim.lr_scheduler.LRScheduler) or (
        hasattr(obj, "step") and isinstance(getattr(obj, "optimizer", None), torch.optim.Optimizer))


def _describe(output: Any) -> str:
    if isinstance(output, torch.Tensor):
        return f"a tensor of shape {tuple(output.shape)}"
    return f"{type(output).__name__} without a scalar `loss`"


class WrappedModel(Module):
    """Trains ``self.model``: logs ``train_loss``/``val_loss``/``test_loss``; see :meth:`Module.wrap`."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: Callable[[Iterator[torch.nn.Parameter]], torch.optim.Optimizer] | torch.optim.Optimizer,
        lr_scheduler: Callable[[torch.optim.Optimizer], Any] | Any = None,
        lr_scheduler_interval: str = "step",
        batch_size: int = 8,
    ) -> None:
        super().__init__()
        if isinstance(model, Module):
            raise EmberConfigError(f"Module.wrap got an ember.Module ({type(model).__name__}); pass it to fit directly.")
        if not isinstance(optimizer, torch.optim.Optimizer) and not callable(optimizer):
            raise EmberConfigError(
                f"Module.wrap(optimizer=...) must be an optimizer or a factory such as "
                f"`lambda params: torch.optim.AdamW(params, lr=1e-4)`, got {type(optimizer).__name__}."
            )
        if lr_scheduler is not None and _is_built_scheduler(lr_scheduler):
            bound = getattr(lr_scheduler, "optimizer", None)
            if not isinstance(optimizer, torch.optim.Optimizer) or bound is not optimizer:
                raise EmberConfigError(
                    f"Module.wrap(lr_scheduler={type(lr_scheduler).__name__}(...)): a built scheduler must belong to "
                    "the optimizer passed as optimizer= (build both on the model, or pass the scheduler as a factory "
                    "such as `lambda opt: torch.optim.lr_scheduler.StepLR(opt, 10)`)."
                )
        elif lr_scheduler is not None and not callable(lr_scheduler):
            raise EmberConfigError(
                f"Module.wrap(lr_scheduler=...) must be a scheduler or a factory called with the optimizer, got "
                f"{type(lr_scheduler).__name__}."
            )
        if lr_scheduler_interval not in ("step", "epoch"):
            raise unknown_value("lr_scheduler_interval", lr_scheduler_interval, ["step", "epoch"])
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise EmberConfigError(f"Module.wrap(batch_size={batch_size!r}): expected an int >= 1 (the batch size of "
                                   "the loaders built for datasets passed to fit/validate/test/predict).")
        self.model = model
        self.batch_size = batch_size
        self._optimizer_spec = optimizer
        self._scheduler_factory = lr_scheduler
        self._scheduler_interval = lr_scheduler_interval

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def dataloader_for(self, dataset: Any, train: bool) -> DataLoader[Any]:
        """The loader for a dataset passed straight to the Trainer (see :mod:`ember.trainer._collate`)."""
        return loader_for(dataset, DataCollator(self.model), self.batch_size, train)

    def compute_loss(self, batch: Any) -> torch.Tensor:
        return loss_of(call_model(self.model, batch))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self.compute_loss(batch)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", self.compute_loss(batch), prog_bar=True, sync_dist=True)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.log("test_loss", self.compute_loss(batch), sync_dist=True)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        return call_model(self.model, batch)

    def configure_optimizers(self) -> Any:
        spec = self._optimizer_spec
        optimizer = spec if isinstance(spec, torch.optim.Optimizer) else spec(self.model.parameters())
        if self._scheduler_factory is None:
            return optimizer
        factory = self._scheduler_factory
        scheduler = factory if _is_built_scheduler(factory) else factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self._scheduler_interval}}
