"""The error every rank raises when a collective save or load failed somewhere: the real cause, on every rank.

Each rank that failed reports ``(message, secondary)``; a *secondary* failure is a consequence of another rank's
(the temporary directory vanished because that rank abandoned the save). A rank re-raises its own error when it
is a primary one; every other rank raises a :class:`CheckpointError` quoting the primary causes, so a full disk
on rank 0 reads "the disk is full" on rank 1 too, not an internal hint about the writing protocol.
"""

from __future__ import annotations

from collections.abc import Sequence

from ._errors import AbandonedCheckpointError, CheckpointError

__all__ = ["Report", "collective_error", "failure_report"]

Report = tuple[str, bool]  # (message, secondary)


def failure_report(error: BaseException | None) -> Report | None:
    """What this rank tells the others about its failure (None: it did not fail)."""
    if error is None:
        return None
    return f"{type(error).__name__}: {error}", isinstance(error, AbandonedCheckpointError)


def collective_error(what: str, error: BaseException | None, reports: Sequence[Report | None]) -> BaseException:
    """The exception this rank raises, given its own ``error`` and every rank's report (indexed by rank).

    Example:
        >>> reports = [("CheckpointError: could not write model.safetensors: the disk is full", False), None]
        >>> print(collective_error("save_state(): writing step-4", None, reports))
        save_state(): writing step-4 failed on rank 0: CheckpointError: could not write model.safetensors: the disk is full. Nothing was committed and the previous checkpoints are untouched.
    """
    if error is not None and not isinstance(error, AbandonedCheckpointError):
        return error
    failed = [(rank, report) for rank, report in enumerate(reports) if report is not None]
    primary = [(rank, message) for rank, (message, secondary) in failed if not secondary]
    shown = primary or [(rank, message) for rank, (message, _) in failed]
    ranks = ", ".join(str(rank) for rank, _ in shown)
    causes = "; ".join(message if len(shown) == 1 else f"rank {rank}: {message}" for rank, message in shown)
    tail = "" if "Nothing was committed" in causes else (
        " Nothing was committed and the previous checkpoints are untouched.")
    return CheckpointError(f"{what} failed on rank {ranks}: {causes.rstrip('.')}.{tail}")
