"""Callbacks for :class:`ember.Trainer`; Lightning's names, arguments and hook signatures.

>>> from ember.callbacks import Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint
>>> ModelCheckpoint(monitor="val_loss", mode="min").monitor
'val_loss'
"""

from ember.callbacks.base import Callback
from ember.callbacks.early_stopping import EarlyStopping
from ember.callbacks.lr_monitor import LearningRateMonitor
from ember.callbacks.model_checkpoint import ModelCheckpoint
from ember.callbacks.progress import ProgressBar, RichProgressBar, TQDMProgressBar, default_progress_bar

__all__ = [
    "Callback",
    "EarlyStopping",
    "LearningRateMonitor",
    "ModelCheckpoint",
    "ProgressBar",
    "RichProgressBar",
    "TQDMProgressBar",
    "default_progress_bar",
]
# More callbacks (ModelSummary, Timer, ThroughputMonitor, OnExceptionCheckpoint, ...) are added below as
# `from ember.callbacks.<file> import <Name>` lines plus an __all__ entry each.

from ember.callbacks.gradient_accumulation_scheduler import GradientAccumulationScheduler
from ember.callbacks.lr_finder import LearningRateFinder
from ember.callbacks.model_summary import ModelSummary
from ember.callbacks.on_exception_checkpoint import OnExceptionCheckpoint
from ember.callbacks.throughput_monitor import ThroughputMonitor
from ember.callbacks.timer import Timer

__all__ += [
    "GradientAccumulationScheduler",
    "LearningRateFinder",
    "ModelSummary",
    "OnExceptionCheckpoint",
    "ThroughputMonitor",
    "Timer",
]
