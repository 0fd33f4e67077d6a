"""Finding checkpoints under a root dir, following ``latest``, and deleting old ones (retention)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

from ._errors import CheckpointError
from ._fsio import MANIFEST, remove_tree
from ._read import verify
from ._store import LATEST

_STEP = re.compile(r"step-(\d{8,})")
_LEFTOVER_PREFIXES = (".tmp-", ".old-", ".del-", f".{LATEST}.tmp-")


def step_dir_name(step: int) -> str:
    """The directory name for a checkpoint taken at ``step``.

    Example:
        >>> from ember.checkpoint import step_dir_name
        >>> step_dir_name(120)
        'step-00000120'
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step_dir_name(step={step!r}): step must be an int >= 0.")
    return f"step-{step:08d}"


def _step_of(name: str) -> int | None:
    match = _STEP.fullmatch(name)
    return int(match[1]) if match else None


def list_checkpoints(root: Path) -> list[Path]:
    """Committed ``step-XXXXXXXX`` dirs (with a manifest) under ``root``, oldest step first.

    Temporary (``.tmp-*``) and moved-aside (``.old-*``) dirs are ignored; a missing root gives ``[]``.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from ember.checkpoint import list_checkpoints
        >>> list_checkpoints(Path(tempfile.mkdtemp()))
        []
    """
    root = Path(root)
    found: list[tuple[int, str]] = []
    try:
        entries = list(os.scandir(root))
    except (FileNotFoundError, NotADirectoryError):
        return []
    for entry in entries:
        step = _step_of(entry.name)
        if (
            step is not None
            and entry.is_dir(follow_symlinks=False)
            and os.path.isfile(Path(entry.path, MANIFEST))
        ):
            found.append((step, entry.name))
    return [root / name for _, name in sorted(found)]


def _orphans(root: Path) -> list[tuple[int, Path]]:
    """``.old-<name>`` dirs whose ``<name>`` vanished: a replace interrupted between its two renames."""
    out = []
    for path in root.glob(".old-step-*"):
        name = path.name.removeprefix(".old-")
        step = _step_of(name)
        if step is not None and path.is_dir() and not os.path.lexists(root / name):
            out.append((step, path))
    return out


def _pointer(root: Path) -> Path | None:
    try:
        text = (root / LATEST).read_text(encoding="utf-8").strip()
    except (OSError, ValueError):
        return None
    if not text or text in (".", "..") or "/" in text or "\\" in text or "\x00" in text or "\n" in text:
        return None
    return root / text


def _complete(path: Path) -> bool:
    try:
        verify(path, check_hashes=False)
    except CheckpointError:
        return False
    return True


def find_latest(root: Path) -> Path | None:
    """The newest complete checkpoint under ``root``, or None.

    Follows ``root/latest`` when it names a dir that passes ``verify(check_hashes=False)``; otherwise scans
    committed dirs from the newest step down and returns the first that passes (a checkpoint orphaned as
    ``.old-<name>`` by a replace interrupted mid-way counts too).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from ember.checkpoint import find_latest
        >>> find_latest(Path(tempfile.mkdtemp())) is None
        True
    """
    root = Path(root)
    target = _pointer(root)
    best = target if target is not None and _complete(target) else None
    best_step = _manifest_step(best) if best is not None else -1
    # A crash between a commit and the pointer update leaves the pointer one checkpoint behind: a complete
    # checkpoint of a later step wins over the pointer. Dirs with other names (the Trainer's templates) count.
    candidates = [(_manifest_step(p), 1, p) for p in _committed_dirs(root)]
    candidates += [(s, 0, p) for s, p in _orphans(root)]
    for step, _, path in sorted(candidates, key=lambda c: (c[0], c[1], c[2].name), reverse=True):
        if step <= best_step:
            break
        if path != target and _complete(path):
            return path
    return best


def _manifest_step(path: Path) -> int:
    try:
        with open(path / MANIFEST, encoding="utf-8") as f:
            step = json.load(f).get("step", -1)
        return int(step) if isinstance(step, int) else -1
    except (OSError, ValueError, AttributeError):
        return -1


def _committed_dirs(root: Path) -> list[Path]:
    """Every non-hidden directory under ``root`` holding a manifest (step-* and template-named ones)."""
    try:
        entries = list(os.scandir(root))
    except OSError:
        return []
    return [
        root / e.name for e in entries
        if not e.name.startswith(".") and e.is_dir(follow_symlinks=False) and os.path.isfile(Path(e.path, MANIFEST))
    ]


def _restore_orphans(root: Path) -> None:
    for _, old in _orphans(root):
        if _complete(old):
            try:
                os.rename(old, root / old.name.removeprefix(".old-"))
            except OSError:
                pass


def apply_retention(root: Path, keep_last: int | None, protect: Iterable[Path] = ()) -> list[Path]:
    """Delete committed checkpoints beyond the newest ``keep_last``; return the dirs deleted.

    Never deletes a path in ``protect`` nor the one ``root/latest`` points at (so it can keep more than
    ``keep_last``). ``keep_last=None`` keeps every checkpoint. Stale ``.tmp-*`` / ``.old-*`` leftovers
    are removed too (not listed in the result). Call it only on rank 0 right after :func:`commit`, never
    while a checkpoint is being written under ``root``.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from ember.checkpoint import apply_retention, begin, commit, list_checkpoints, step_dir_name, write_json
        >>> root = Path(tempfile.mkdtemp())
        >>> for step in (1, 2, 3):
        ...     tmp = begin(root / step_dir_name(step))
        ...     write_json(tmp, "state-rank0.json", {"step": step})
        ...     _ = commit(tmp, root / step_dir_name(step), {"step": step})
        >>> [p.name for p in apply_retention(root, keep_last=1)]
        ['step-00000001', 'step-00000002']
        >>> [p.name for p in list_checkpoints(root)]
        ['step-00000003']
    """
    if keep_last is not None and (
        isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 0
    ):
        raise ValueError(f"apply_retention(keep_last={keep_last!r}): use None (keep all) or an int >= 0.")
    root = Path(root)
    if not root.is_dir():
        return []
    _restore_orphans(root)
    for entry in os.scandir(root):
        if entry.name.startswith(_LEFTOVER_PREFIXES):
            remove_tree(Path(entry.path))
    if keep_last is None:
        return []
    keep = {p.resolve() for p in protect}
    target = _pointer(root)
    if target is not None:
        keep.add(target.resolve())
    checkpoints = list_checkpoints(root)
    doomed = checkpoints[: max(len(checkpoints) - keep_last, 0)]
    deleted = []
    for path in doomed:
        if path.resolve() in keep:
            continue
        # Rename first so a half-deleted dir is never mistaken for a checkpoint.
        trash = root / f".del-{path.name}"
        remove_tree(trash)
        try:
            os.rename(path, trash)
        except OSError as exc:
            raise CheckpointError(
                f"could not delete old checkpoint {path} ({exc}); check permissions, or delete it by hand."
            ) from exc
        remove_tree(trash)
        deleted.append(path)
    return deleted
