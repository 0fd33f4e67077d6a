"""The one exception type of :mod:`ember.checkpoint`."""

from __future__ import annotations


class CheckpointError(RuntimeError):
    """A checkpoint could not be written, read or trusted.

    Every message names the file or directory involved and says what to do about it.
    """
