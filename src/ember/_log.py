"""Library messages: the ``"ember"`` logger of the standard ``logging`` module.

Messages go to standard output as ``[ember] ...`` lines (the stream is looked up at each message, so redirections
and captures see them). Callers emit on the main process only, so a job of N processes prints each message once.
Silence or redirect them as any library's: ``logging.getLogger("ember").setLevel(logging.WARNING)`` or replace its
handlers.

>>> info("model on cpu")
[ember] model on cpu
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

LOGGER = logging.getLogger("ember")


class _StdoutHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stdout`` is when the message is emitted."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)
        self.setFormatter(logging.Formatter("[ember] %(message)s"))

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stdout

    @stream.setter
    def stream(self, value: TextIO) -> None:  # set by StreamHandler.__init__; the live sys.stdout wins
        pass


if not LOGGER.handlers:
    LOGGER.addHandler(_StdoutHandler())
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False


def info(message: str) -> None:
    """Say ``message`` (call on the main process)."""
    LOGGER.info(message)


def warn(message: str) -> None:
    """A warning the user should act on (call on the main process)."""
    LOGGER.warning(message)
