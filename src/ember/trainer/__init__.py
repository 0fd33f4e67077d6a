"""The structured layer: :class:`Module`, :class:`Trainer` and the metric store they share."""

from ember.trainer.module import AttributeDict, LightningModule, Module
from ember.trainer.trainer import Trainer

__all__ = ["AttributeDict", "LightningModule", "Module", "Trainer"]
