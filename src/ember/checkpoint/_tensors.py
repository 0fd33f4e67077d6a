"""Tensor files in the safetensors format, written by ember itself in one streaming pass.

The file is exactly what ``safetensors.torch.save_file`` writes (8-byte little-endian header length,
JSON header padded to 8 bytes, then the raw little-endian bytes, largest element size first so every
tensor is aligned). Writing it ourselves lets us hash while writing, copy device/non-contiguous tensors
to CPU one at a time, and accept views and tensors that share storage (each is saved as its own data).
Reading uses :func:`safetensors.torch.load_file` only: never ``torch.load``, never pickle.
"""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from ._errors import CheckpointError
from ._fsio import Data, member_path, write_member

_DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.complex64: "C64",
}
for _name, _code in (
    ("uint64", "U64"),
    ("uint32", "U32"),
    ("uint16", "U16"),
    ("float8_e4m3fn", "F8_E4M3"),
    ("float8_e5m2", "F8_E5M2"),
):
    if isinstance(getattr(torch, _name, None), torch.dtype):
        _DTYPES[getattr(torch, _name)] = _code

_MAX_HEADER = 100_000_000  # safetensors' own limit
_PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def _check(filename: str, tensors: Mapping[str, torch.Tensor]) -> None:
    if sys.byteorder != "little":
        raise CheckpointError(f"cannot write {filename}: safetensors files are little-endian only.")
    for key, t in tensors.items():
        where = f"tensor {key!r} for {filename}"
        if not isinstance(key, str) or key == "__metadata__":
            raise CheckpointError(f"{where}: keys must be str and not '__metadata__'; rename it.")
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(
                f"{where} is a {type(t).__qualname__}, not a torch.Tensor; use save_state()."
            )
        if t.layout != torch.strided or t.is_quantized or t.device.type == "meta":
            raise CheckpointError(
                f"{where} is sparse/quantized/meta; convert it to a dense tensor with data."
            )
        if t.dtype not in _DTYPES:
            raise CheckpointError(
                f"{where} has dtype {t.dtype}, which safetensors cannot store; cast it (supported: "
                f"{', '.join(str(d).removeprefix('torch.') for d in _DTYPES)})."
            )


def _header(order: list[str], tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bytes:
    header: dict[str, object] = {"__metadata__": {"format": "pt", **metadata}}
    offset = 0
    for key in order:
        t = tensors[key]
        nbytes = t.numel() * t.element_size()
        header[key] = {
            "dtype": _DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    return raw + b" " * (-len(raw) % 8)


def _as_bytes(t: torch.Tensor) -> memoryview:
    t = t.detach()
    if t.device.type != "cpu":
        t = t.to("cpu")
    t = t.resolve_conj().resolve_neg().contiguous()
    array: Any = t.reshape(-1).view(torch.uint8).numpy()
    return memoryview(array)


def _start_copy(t: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """Begin moving ``t`` to host memory: a CUDA tensor is copied asynchronously into pinned memory."""
    if t.device.type != "cuda":
        return t, None
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t.detach(), non_blocking=True)
    done = torch.cuda.Event()  # type: ignore[no-untyped-call,unused-ignore]
    done.record(torch.cuda.current_stream(t.device))
    return host, done


def _chunks(order: list[str], tensors: Mapping[str, torch.Tensor], header: bytes) -> Iterator[Data]:
    """The file's bytes. A CUDA tensor's copy to the host starts one tensor ahead, so it overlaps the disk write
    of the previous one (at most two tensors are staged in host memory at a time)."""
    yield struct.pack("<Q", len(header)) + header
    pending = [tensors[key] for key in order if tensors[key].numel()]
    ahead = _start_copy(pending[0]) if pending else None
    for i in range(len(pending)):
        assert ahead is not None
        host, done = ahead
        ahead = _start_copy(pending[i + 1]) if i + 1 < len(pending) else None
        if done is not None:
            done.synchronize()
        yield _as_bytes(host)


def write_tensors(
    tmp_dir: Path,
    filename: str,
    tensors: Mapping[str, torch.Tensor],
    *,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write ``tensors`` to ``tmp_dir/filename`` in the safetensors format, fsynced and hashed.

    Any device, views, non-contiguous tensors and tensors sharing storage are fine: each tensor is copied
    to contiguous CPU memory only if needed, one at a time. Every dtype is kept (bfloat16 included).
    ``metadata`` (str -> str) goes into the safetensors header. A full disk raises
    :class:`CheckpointError` after removing the partial file.

    Example:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> from ember.checkpoint import begin, read_tensors, write_tensors
        >>> tmp = begin(Path(tempfile.mkdtemp()) / "step-00000001")
        >>> write_tensors(tmp, "model.safetensors", {"w": torch.ones(2, 3).t(), "b": torch.zeros(3)})
        >>> read_tensors(tmp, "model.safetensors")["w"].shape
        torch.Size([3, 2])
    """
    tmp_dir = Path(tmp_dir)
    _check(filename, tensors)
    # Largest element first keeps every tensor aligned to its element size (the header is 8-aligned).
    order = sorted(tensors, key=lambda k: -tensors[k].element_size())
    header = _header(order, tensors, dict(metadata or {}))
    write_member(tmp_dir, filename, _chunks(order, tensors, header))


def read_tensors(
    ckpt_dir: Path, filename: str, *, device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """Load a safetensors file of a checkpoint with :func:`safetensors.torch.load_file` (no pickle).

    Raises :class:`CheckpointError` naming the file if it is missing, truncated, corrupted or not a
    safetensors file at all (a pickle, for instance, is refused without being executed).

    Example:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> from ember.checkpoint import begin, read_tensors, write_tensors
        >>> tmp = begin(Path(tempfile.mkdtemp()) / "step-00000001")
        >>> write_tensors(tmp, "model.safetensors", {"w": torch.arange(4, dtype=torch.bfloat16)})
        >>> read_tensors(tmp, "model.safetensors")["w"].dtype
        torch.bfloat16
    """
    from safetensors.torch import load_file

    path = member_path(Path(ckpt_dir), filename)
    if not path.is_file():
        raise CheckpointError(
            f"{path} does not exist: the checkpoint is incomplete or was saved without it; run verify() "
            "on it or resume from another checkpoint."
        )
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc}; check the file's permissions.") from exc
    if head.startswith(_PICKLE_MAGIC):
        raise CheckpointError(
            f"{path} is a pickle, not a safetensors file; ember never unpickles checkpoint data (it can "
            "execute code). Re-save it with ember, or convert it yourself if you trust its origin."
        )
    if len(head) < 9 or struct.unpack("<Q", head[:8])[0] > _MAX_HEADER or head[8:9] != b"{":
        raise CheckpointError(
            f"{path} is not a valid safetensors file (corrupted or truncated); run verify() on the "
            "checkpoint or resume from an earlier one."
        )
    try:
        dev: str | int = device if isinstance(device, str) else str(device)
        return load_file(path, device=dev)
    except Exception as exc:  # SafetensorError, OSError, RuntimeError: all mean a bad file here
        raise CheckpointError(
            f"{path} could not be read as safetensors ({exc}): the file is corrupted or truncated; run "
            "verify() on the checkpoint or resume from an earlier one."
        ) from exc
