"""Reading a committed checkpoint directory: verify, read_json, load_state (read_tensors is in _tensors)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ._codec import unflatten_state
from ._errors import CheckpointError
from ._fsio import MANIFEST, hash_file, member_path, parallel_map
from ._store import FORMAT_VERSION, STATE_FORMAT
from ._tensors import read_tensors

_HINT = "restore it, or delete {dir} to resume from an earlier checkpoint"


def _bad(ckpt_dir: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{what}: the checkpoint is corrupted or truncated; {_HINT.format(dir=ckpt_dir)}.")


def _looks_like_ember(names: list[str]) -> bool:
    return any(n.startswith("state-rank") or n.endswith(".safetensors") or n == "trainer.json" for n in names)


def _no_manifest(ckpt_dir: Path) -> CheckpointError:
    """A directory without a manifest: an interrupted save of ember's, or something that never was a checkpoint."""
    try:
        names = sorted(p.name for p in ckpt_dir.iterdir())
    except OSError:
        names = []
    if _looks_like_ember(names):
        return _bad(ckpt_dir, f"{ckpt_dir / MANIFEST} is missing (the directory was never committed)")
    held = "it is empty" if not names else f"it holds {names[:8]}{' ...' if len(names) > 8 else ''}"
    return CheckpointError(
        f"{ckpt_dir} is not an ember checkpoint: it has no {MANIFEST} and none of ember's files ({held}). Pass a "
        "directory written by save_state()/save_checkpoint(), or call load_state() with no path to resume from the "
        "newest checkpoint under <project_dir>/checkpoints."
    )


def _load_manifest(ckpt_dir: Path) -> dict[str, Any]:
    path = ckpt_dir / MANIFEST
    if not ckpt_dir.is_dir():
        raise CheckpointError(f"checkpoint directory {ckpt_dir} does not exist; check the path.")
    try:
        manifest = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise _no_manifest(ckpt_dir) from None
    except (OSError, ValueError) as exc:
        raise _bad(ckpt_dir, f"{path} is not readable JSON ({exc})") from exc
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format_version {version}, newer than this ember understands ({FORMAT_VERSION}); "
            "upgrade ember to load it."
        )
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if (
        version != FORMAT_VERSION
        or not isinstance(files, dict)
        or not all(_valid_entry(e) for e in files.values())
    ):
        raise _bad(ckpt_dir, f"{path} is not a valid ember manifest")
    result: dict[str, Any] = manifest
    return result


def _valid_entry(entry: Any) -> bool:
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("size"), int)
        and isinstance(entry.get("sha256"), str)
        and len(entry["sha256"]) == 64
    )


def verify(ckpt_dir: Path, *, check_hashes: bool = True) -> dict[str, Any]:
    """Check a committed checkpoint against its manifest and return the manifest.

    Every listed file must exist with the recorded size and (unless ``check_hashes=False``, the cheap
    mode) the recorded sha256. Otherwise :class:`CheckpointError` names the file and says it is
    corrupted or truncated.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from ember.checkpoint import begin, commit, verify, write_json
        >>> root = Path(tempfile.mkdtemp())
        >>> tmp = begin(root / "step-00000001")
        >>> write_json(tmp, "state-rank0.json", {"step": 1})
        >>> ckpt = commit(tmp, root / "step-00000001", {"step": 1})
        >>> verify(ckpt)["files"]["state-rank0.json"]["size"] > 0
        True
        >>> verify(ckpt, check_hashes=False)["step"]
        1
    """
    ckpt_dir = Path(ckpt_dir)
    manifest = _load_manifest(ckpt_dir)
    files: dict[str, dict[str, Any]] = manifest["files"]
    paths = {}
    for name, entry in files.items():
        path = member_path(ckpt_dir, name)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise _bad(ckpt_dir, f"{path}, listed in the manifest, is missing") from None
        except OSError as exc:
            raise _bad(ckpt_dir, f"{path} cannot be read ({exc})") from exc
        if not path.is_file():
            raise _bad(ckpt_dir, f"{path} is not a regular file")
        if size != entry["size"]:
            raise _bad(ckpt_dir, f"{path} has {size} bytes but the manifest says {entry['size']}")
        paths[name] = path
    if check_hashes:
        names = list(paths)
        try:
            digests = parallel_map(lambda n: hash_file(paths[n])[1], names)
        except OSError as exc:
            raise _bad(ckpt_dir, f"a file of {ckpt_dir} cannot be read ({exc})") from exc
        for name, digest in zip(names, digests):
            if digest != files[name]["sha256"]:
                raise _bad(ckpt_dir, f"{paths[name]} does not match its sha256 in the manifest")
    return manifest


def read_json(ckpt_dir: Path, filename: str) -> Any:
    """Read a JSON file of a checkpoint (or temporary) dir; a missing or malformed file raises CheckpointError.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from ember.checkpoint import begin, read_json, write_json
        >>> tmp = begin(Path(tempfile.mkdtemp()) / "step-00000001")
        >>> write_json(tmp, "trainer.json", {"epoch": 2})
        >>> read_json(tmp, "trainer.json")
        {'epoch': 2}
    """
    path = member_path(Path(ckpt_dir), filename)
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        raise CheckpointError(
            f"{path} does not exist: the checkpoint is incomplete or was saved without it; run verify() "
            "on it or resume from another checkpoint."
        ) from None
    except (OSError, ValueError) as exc:  # ValueError covers JSON and UTF-8 decoding errors
        raise CheckpointError(
            f"{path} is not valid JSON ({exc}): the file is corrupted or truncated (ember never unpickles); "
            "run verify() on the checkpoint or resume from an earlier one."
        ) from exc


def load_state(ckpt_dir: Path, name: str) -> Any:
    """Load what :func:`save_state` wrote under ``name`` (``{name}.json`` + ``{name}.safetensors``).

    Tensors come back on CPU. A missing, corrupted or foreign file raises :class:`CheckpointError`.

    Example:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> from ember.checkpoint import begin, load_state, save_state
        >>> tmp = begin(Path(tempfile.mkdtemp()) / "step-00000001")
        >>> save_state(tmp, "optimizer", {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": []})
        >>> load_state(tmp, "optimizer")["state"][0]["step"]
        tensor(3.)
    """
    path = member_path(Path(ckpt_dir), f"{name}.json")
    doc = read_json(ckpt_dir, f"{name}.json")
    version = doc.get("ember_state") if isinstance(doc, dict) else None
    if isinstance(version, int) and version > STATE_FORMAT:
        raise CheckpointError(f"{path} was written by a newer ember (state format {version}); upgrade ember.")
    tensor_file = doc.get("tensors") if isinstance(doc, dict) else None
    if version != STATE_FORMAT or "skeleton" not in doc or not isinstance(tensor_file, str | None):
        raise CheckpointError(
            f"{path} is not an ember state file written by save_state(): it is corrupted, truncated or "
            "foreign; run verify() on the checkpoint or resume from an earlier one."
        )
    tensors = read_tensors(Path(ckpt_dir), tensor_file) if tensor_file else {}
    return unflatten_state(doc["skeleton"], tensors, root=name)
