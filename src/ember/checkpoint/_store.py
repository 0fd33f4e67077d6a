"""Writing a checkpoint directory: begin -> write_* / save_state (any rank) -> commit (rank 0)."""

from __future__ import annotations

import importlib
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._codec import flatten_state
from ._errors import CheckpointError
from ._fsio import (
    DIGEST_DIR,
    MANIFEST,
    disk_error,
    fsync_dir,
    fsync_file,
    hash_file,
    parallel_map,
    recorded_digests,
    remove_tree,
    rename_exchange,
    write_member,
    write_small_atomic,
)
from ._tensors import write_tensors

FORMAT_VERSION = 1
LATEST = "latest"
STATE_FORMAT = 1
_RESERVED_META = ("format_version", "ember_version", "files")


README = "README.md"
README_TEXT = """\
# ember checkpoint

This directory is a checkpoint written by ember, not a `torch.save` file: `torch.load` reads single files and
cannot open it (it raises IsADirectoryError). Load it with ember:

    model = MyModule.load_from_checkpoint("<this directory>")      # a Module: hyperparameters + weights
    trainer.fit(model, ckpt_path="<this directory>")              # resume (also validate/test/predict)
    accelerator.load_state("<this directory>")                    # an Accelerator loop

The weights alone: `safetensors.torch.load_file("<this directory>/model.safetensors")`.
`manifest.json` lists every file with its size and sha256; tensors are safetensors files, everything else is JSON,
and nothing here is ever unpickled.
"""


def tmp_dir_for(final_dir: Path) -> Path:
    return final_dir.parent / f".tmp-{final_dir.name}"


def begin(final_dir: Path) -> Path:
    """Create (after removing any stale leftover) and return the temporary dir for ``final_dir``.

    The path is deterministic, ``final_dir.parent / f".tmp-{final_dir.name}"``: rank 0 calls ``begin``,
    the caller runs a barrier, and every rank writes into the same path.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from ember.checkpoint import begin, step_dir_name
        >>> root = Path(tempfile.mkdtemp())
        >>> begin(root / step_dir_name(120)).name
        '.tmp-step-00000120'
    """
    final_dir = Path(final_dir)
    tmp_dir = tmp_dir_for(final_dir)
    try:
        remove_tree(tmp_dir)
        final_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp_dir.mkdir()
    except OSError as exc:
        raise disk_error(tmp_dir, exc) from exc
    return tmp_dir


def check_plain_json(obj: Any, where: str) -> None:
    """Raise CheckpointError unless ``obj`` is made of dict (str keys), list, str, int, finite float, bool, None."""
    if obj is None or isinstance(obj, bool | int | str):
        return
    if isinstance(obj, float):
        if math.isfinite(obj):
            return
        problem = f"the float {obj} (JSON has no inf/nan)"
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            check_plain_json(v, f"{where}[{i}]")
        return
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                problem = f"the {type(k).__qualname__} key {k!r} (JSON keys are str)"
                break
            check_plain_json(v, f"{where}[{k!r}]")
        else:
            return
    else:
        problem = f"a {type(obj).__qualname__}"
    raise CheckpointError(
        f"{where} holds {problem}, which plain JSON cannot store exactly. Use save_state() for tensors, "
        "tuples, int keys or inf/nan, or convert the value to dict/list/str/int/float/bool/None."
    )


def write_json(tmp_dir: Path, filename: str, obj: Any) -> None:
    """Write plain-JSON ``obj`` to ``tmp_dir/filename``, fsynced and hashed for the manifest.

    Only exact JSON is accepted (str-keyed dicts, lists, str, int, finite float, bool, None); anything
    else raises :class:`CheckpointError` naming where it is. A full disk raises CheckpointError too.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from ember.checkpoint import begin, read_json, write_json
        >>> tmp = begin(Path(tempfile.mkdtemp()) / "step-00000001")
        >>> write_json(tmp, "trainer.json", {"callbacks": [], "best": 0.25})
        >>> read_json(tmp, "trainer.json")["best"]
        0.25
    """
    check_plain_json(obj, f"{filename} content")
    data = json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False).encode()
    write_member(Path(tmp_dir), filename, [data])


def save_state(tmp_dir: Path, name: str, obj: Any) -> None:
    """Save any supported nested state as ``{name}.json`` (skeleton) + ``{name}.safetensors`` (tensors).

    The tensor file is written only when ``obj`` holds tensors or numpy arrays. Load with
    :func:`load_state`. Objects the codec cannot store raise :class:`CheckpointError` naming their place.

    Example:
        >>> import random, tempfile, torch
        >>> from pathlib import Path
        >>> from ember.checkpoint import begin, load_state, save_state
        >>> tmp = begin(Path(tempfile.mkdtemp()) / "step-00000001")
        >>> save_state(tmp, "state-rank0", {"python": random.getstate(), "torch": torch.get_rng_state()})
        >>> load_state(tmp, "state-rank0")["python"] == random.getstate()
        True
    """
    skeleton, tensors = flatten_state(obj, root=name)
    tensor_file = f"{name}.safetensors" if tensors else None
    if tensor_file is not None:
        write_tensors(Path(tmp_dir), tensor_file, tensors)
    write_json(
        Path(tmp_dir),
        f"{name}.json",
        {"ember_state": STATE_FORMAT, "tensors": tensor_file, "skeleton": skeleton},
    )


def _ember_version() -> str:
    try:
        return str(importlib.import_module("ember").__version__)
    except Exception:
        return "unknown"


def _list_files(tmp_dir: Path) -> list[str]:
    names: list[str] = []
    for dirpath, dirnames, filenames in os.walk(tmp_dir):
        here = Path(dirpath)
        if here == tmp_dir:
            dirnames[:] = [d for d in dirnames if d != DIGEST_DIR]
        for entry in [*dirnames, *filenames]:
            path = here / entry
            if path.is_symlink() or not (path.is_dir() or path.is_file()):
                raise CheckpointError(
                    f"{path} is a symlink or special file; a checkpoint holds regular files only. Remove it."
                )
        names.extend((here / f).relative_to(tmp_dir).as_posix() for f in filenames)
    return sorted(n for n in names if n != MANIFEST)


def _file_entries(tmp_dir: Path) -> dict[str, dict[str, Any]]:
    """Size and sha256 of every file (reusing digests computed while writing), each file fsynced."""
    names = _list_files(tmp_dir)
    recorded = recorded_digests(tmp_dir)

    def entry(name: str) -> dict[str, Any]:
        path = tmp_dir / name
        known = recorded.get(name)
        if known is not None and path.stat().st_size == known[0]:
            fsync_file(path)
            size, sha = known
        else:  # written by other means (e.g. torch.distributed.checkpoint): hash it here
            size, sha = hash_file(path, fsync=True)
        return {"size": size, "sha256": sha}

    return dict(zip(names, parallel_map(entry, names)))


def _fsync_tree(tmp_dir: Path) -> None:
    for dirpath, _, _ in sorted(os.walk(tmp_dir), key=lambda w: -len(Path(w[0]).parts)):
        fsync_dir(Path(dirpath))


def _swap_into_place(tmp_dir: Path, final_dir: Path) -> None:
    """Rename ``tmp_dir`` to ``final_dir``; an existing ``final_dir`` is replaced with no moment without either."""
    parent = final_dir.parent
    if not os.path.lexists(final_dir):
        os.rename(tmp_dir, final_dir)
    elif rename_exchange(tmp_dir, final_dir):  # atomic swap: tmp_dir now holds the old checkpoint
        fsync_dir(parent)
        remove_tree(tmp_dir)
        return
    else:
        old = parent / f".old-{final_dir.name}"
        remove_tree(old)
        os.rename(final_dir, old)
        try:
            os.rename(tmp_dir, final_dir)
        except BaseException:
            try:
                os.rename(old, final_dir)
            except OSError:
                pass  # find_latest / apply_retention recover an orphaned .old-<name>
            raise
        try:
            fsync_dir(parent)
        finally:
            remove_tree(old)
        return
    fsync_dir(parent)


def _check_meta(tmp_dir: Path, final_dir: Path, meta: Mapping[str, Any]) -> None:
    if tmp_dir.resolve().parent != final_dir.resolve().parent:
        raise CheckpointError(
            f"cannot commit {tmp_dir} as {final_dir}: both must be in the same directory for an atomic "
            "rename; use the directory that begin(final_dir) returned."
        )
    clash = [k for k in _RESERVED_META if k in meta]
    if clash:
        raise CheckpointError(
            f"commit(meta=...) for {final_dir} may not set {clash}: ember writes those itself."
        )
    check_plain_json(dict(meta), f"commit(meta=...) for {final_dir}")


def commit(tmp_dir: Path, final_dir: Path, meta: Mapping[str, Any], *, update_latest: bool = True) -> Path:
    """Seal ``tmp_dir`` (manifest with sizes + sha256, fsync) and rename it to ``final_dir`` (rank 0 only).

    Call after every rank finished writing. ``manifest.json`` holds ``format_version``, ``ember_version``,
    everything in ``meta`` (plain JSON) and ``files``; a ``README.md`` saying how to load the directory (it is
    not a ``torch.save`` file) is added unless the caller wrote one. An existing ``final_dir`` is replaced atomically.
    With ``update_latest`` the file ``final_dir.parent / "latest"`` then names ``final_dir`` (atomic
    replace). On any failure the temporary dir is removed and the previous checkpoint stays intact.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from ember.checkpoint import begin, commit, find_latest, step_dir_name, write_json
        >>> root = Path(tempfile.mkdtemp())
        >>> tmp = begin(root / step_dir_name(5))
        >>> write_json(tmp, "state-rank0.json", {"step": 5})
        >>> commit(tmp, root / step_dir_name(5), {"step": 5, "world_size": 1}).name
        'step-00000005'
        >>> find_latest(root).name
        'step-00000005'
    """
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    if not tmp_dir.is_dir():
        raise CheckpointError(
            f"cannot commit {tmp_dir}: it does not exist. Call begin({final_dir}) first and have every rank "
            "write into the directory it returns (if they did, a failed write abandoned it: see that error)."
        )
    try:
        _check_meta(tmp_dir, final_dir, meta)
        if not (tmp_dir / README).exists():  # torch.load users find how to load it (see README_TEXT)
            write_member(tmp_dir, README, [README_TEXT.encode()])
        manifest = {
            "format_version": FORMAT_VERSION,
            "ember_version": _ember_version(),
            **meta,
            "files": _file_entries(tmp_dir),
        }
        write_member(
            tmp_dir, MANIFEST, [json.dumps(manifest, indent=2, ensure_ascii=False).encode()], manifest=True
        )
        remove_tree(tmp_dir / DIGEST_DIR)
        _fsync_tree(tmp_dir)
        _swap_into_place(tmp_dir, final_dir)
    except BaseException as exc:
        remove_tree(tmp_dir)
        if isinstance(exc, OSError):
            raise CheckpointError(
                f"could not commit {tmp_dir} as {final_dir}: {exc} (disk full, read-only or no permission?). "
                "The temporary directory was removed and the previous checkpoint is untouched; fix the cause "
                "and save again."
            ) from exc
        raise
    if update_latest:
        write_latest(final_dir.parent, final_dir.name)
    return final_dir


def write_latest(root: Path, name: str) -> None:
    """Point ``root/latest`` at the checkpoint dir ``name`` (atomic replace, fsynced)."""
    try:
        write_small_atomic(root / LATEST, name + "\n")
    except OSError as exc:
        raise CheckpointError(
            f"checkpoint {root / name} was committed, but {root / LATEST} could not be updated ({exc}); "
            "find_latest() still finds it by scanning. Check free space and permissions in that directory."
        ) from exc
