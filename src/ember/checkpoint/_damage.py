"""Damaged checkpoints: why a directory does not load, what a resume skipped, moving a leftover aside.

A resume skips a newest checkpoint that is not complete (no manifest, a file missing or of the wrong size) and
loads an earlier one; :func:`describe_fallback` says which and why. When the run reaches that step again, the
leftover still occupies the name it needs: in ember's own checkpoint folders :func:`move_aside_damaged` renames
it to ``.damaged-<name>-<time>`` (kept for inspection, ignored by every reader, never deleted by ember) so the
new checkpoint can be committed there.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ._errors import CheckpointError
from ._fsio import MANIFEST
from ._read import verify

__all__ = ["DAMAGED_PREFIX", "damage_reason", "describe_fallback", "move_aside_damaged"]

DAMAGED_PREFIX = ".damaged-"


def damage_reason(path: Path) -> str | None:
    """Why ``path`` is not a complete checkpoint (None when it is one, or when it is absent or an empty dir).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> leftover = Path(tempfile.mkdtemp()) / "step-00000012"
        >>> leftover.mkdir(); (leftover / "model.safetensors").write_bytes(b"")
        0
        >>> damage_reason(leftover)
        'it has no manifest.json, so it was never committed (a save was interrupted)'
    """
    path = Path(path)
    if not os.path.lexists(path):
        return None
    if not path.is_dir():
        return "it is a file, not a checkpoint directory"
    if not (path / MANIFEST).exists():
        return None if not any(path.iterdir()) else (
            f"it has no {MANIFEST}, so it was never committed (a save was interrupted)")
    try:
        json.loads((path / MANIFEST).read_bytes())
    except (OSError, ValueError):
        return f"its {MANIFEST} is unreadable (truncated or damaged)"
    try:
        verify(path, check_hashes=False)
    except CheckpointError as exc:
        return f"it does not match its manifest ({str(exc).split(': the checkpoint', 1)[0]})"
    return None


def move_aside_damaged(final: Path) -> str | None:
    """If ``final`` holds an incomplete checkpoint, rename it to ``.damaged-<name>-<time>`` and say so.

    Only for ember's own checkpoint folders (``<project_dir>/checkpoints``, ModelCheckpoint's ``dirpath``), right
    before a save commits ``final``: a complete checkpoint is left for the commit to replace. Returns the notice
    to print, or None when nothing was moved.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> root = Path(tempfile.mkdtemp())
        >>> (root / "step-00000012").mkdir(); (root / "step-00000012" / "state-rank0.json").write_text("{}")
        2
        >>> print(move_aside_damaged(root / "step-00000012"))  # doctest: +ELLIPSIS
        [ember] ...step-00000012 is not a complete checkpoint: it has no manifest.json, so it was never committed (a save was interrupted). Moved it aside to .damaged-step-00000012-... (kept; delete it once you no longer need it) and saving the new checkpoint there.
        >>> [p.name.startswith(".damaged-step-00000012-") for p in root.iterdir()]
        [True]
    """
    final = Path(final)
    reason = damage_reason(final)
    if reason is None:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = final.parent / f"{DAMAGED_PREFIX}{final.name}-{stamp}"
    counter = 1
    while os.path.lexists(target):
        target = final.parent / f"{DAMAGED_PREFIX}{final.name}-{stamp}-{counter}"
        counter += 1
    os.rename(final, target)
    return (
        f"[ember] {final} is not a complete checkpoint: {reason}. Moved it aside to {target.name} (kept; delete it "
        "once you no longer need it) and saving the new checkpoint there."
    )


def _manifest_step(path: Path) -> int | None:
    try:
        step = json.loads((path / MANIFEST).read_bytes()).get("step")
    except (OSError, ValueError, AttributeError):
        return None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def _name_step(path: Path) -> int | None:
    name = path.name
    if name.startswith("step-") and name[5:].isdigit():
        return int(name[5:])
    return None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def skipped_newer(root: Path, chosen: Path | None) -> list[tuple[Path, str]]:
    """Directories under ``root`` that look newer than ``chosen`` but are not complete, with the reason."""
    root = Path(root)
    try:
        entries = sorted(p for p in root.iterdir() if not p.name.startswith(".") and p.is_dir())
    except OSError:
        return []
    chosen_step = None if chosen is None else _manifest_step(Path(chosen))
    floor = -1 if chosen_step is None else chosen_step
    found = []
    for path in entries:
        if chosen is not None and path.resolve() == Path(chosen).resolve():
            continue
        step = _manifest_step(path)
        step = _name_step(path) if step is None else step
        if step is None:  # a template name ("last", "epoch=3-step=40") without a readable manifest: by time
            if chosen is not None and _mtime(path) <= _mtime(Path(chosen)):
                continue
        elif step <= floor:
            continue
        reason = damage_reason(path)
        if reason is not None:
            found.append((path, reason))
    return found


def describe_fallback(roots: list[Path], chosen: Path | None, what: str = "load_state()") -> str | None:
    """The notice for a resume that skipped incomplete newer checkpoints (None when nothing was skipped).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> root = Path(tempfile.mkdtemp())
        >>> (root / "step-00000012").mkdir(); (root / "step-00000012" / "model.safetensors").write_bytes(b"x")
        1
        >>> print(describe_fallback([root], None))  # doctest: +ELLIPSIS
        [ember] load_state(): skipped ...step-00000012 (it has no manifest.json, ...); no complete checkpoint is left, so the run starts from scratch.
    """
    skipped = [item for root in roots for item in skipped_newer(root, chosen)]
    if not skipped:
        return None
    listed = "; ".join(f"{path} ({reason})" for path, reason in skipped)
    then = f"resuming from {chosen} instead" if chosen is not None else (
        "no complete checkpoint is left, so the run starts from scratch")
    return f"[ember] {what}: skipped {listed}; {then}."
