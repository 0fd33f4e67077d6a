"""The exception types of :mod:`ember.checkpoint`."""

from __future__ import annotations


class CheckpointError(RuntimeError):
    """A checkpoint could not be written, read or trusted.

    Every message names the file or directory involved and says what to do about it.
    """


class AbandonedCheckpointError(CheckpointError):
    """A write into a temporary checkpoint directory that is gone: another writer abandoned the save (its own
    error is the cause), or ``begin`` was not called first."""
