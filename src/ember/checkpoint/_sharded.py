"""Sharded state: every rank writes the pieces it holds; any number of ranks reads back exactly the pieces it needs
(resharding), and no tensor is ever assembled whole in one place. Pickle-free: safetensors + JSON.

Layout inside a checkpoint directory, for a state called ``name`` (e.g. ``model`` or ``optimizer``)::

    name/shard-r00000.safetensors    the pieces rank 0 held (keys: state names)
    name/shard-r00000.json           {"ember_shards": 1, "pieces": {key: {"shape": [global], "offset": [...],
                                                                         "size": [...], "dtype": "float32"}}}
    name/shard-r00001.safetensors    ... one pair per writing rank

A piece is a box of a tensor of global ``shape`` starting at ``offset`` with extent ``size``. Reading a box
intersects it with the saved pieces and copies only the overlaps (``safe_open(...).get_slice``).

>>> import tempfile, torch
>>> from pathlib import Path
>>> from ember.checkpoint import begin
>>> tmp = begin(Path(tempfile.mkdtemp()) / "step-00000001")
>>> full = torch.arange(10.0)
>>> for rank, (lo, hi) in enumerate([(0, 5), (5, 10)]):  # two ranks, each holding half
...     save_shards(tmp, "model", rank, {"w": (full[lo:hi], (10,), (lo,))})
>>> reader = ShardReader(tmp, "model")
>>> reader.read("w", offset=(3,), size=(4,))  # a third rank's box, spanning both files
tensor([3., 4., 5., 6.])
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ._errors import CheckpointError
from ._fsio import member_path
from ._read import read_json
from ._store import write_json
from ._tensors import _PICKLE_MAGIC, write_tensors

FORMAT = 1
Piece = tuple[torch.Tensor, Sequence[int], Sequence[int]]  # (local tensor, global shape, offset)
_FILE = re.compile(r"^shard-r(\d+)\.json$")


def shard_file(name: str, rank: int, ext: str) -> str:
    return f"{name}/shard-r{rank:05d}.{ext}"


def save_shards(tmp_dir: Path, name: str, rank: int, pieces: Mapping[str, Piece]) -> None:
    """Write this rank's ``pieces`` of state ``name`` (call on every rank that holds a distinct piece)."""
    index: dict[str, Any] = {}
    tensors: dict[str, torch.Tensor] = {}
    for key, (local, shape, offset) in pieces.items():
        if len(shape) != local.dim() or len(offset) != local.dim():
            raise CheckpointError(f"{name}: piece {key!r} has {local.dim()} dims but shape {list(shape)} / offset "
                                  f"{list(offset)}; they must match.")
        index[key] = {"shape": [int(s) for s in shape], "offset": [int(o) for o in offset],
                      "size": [int(s) for s in local.shape], "dtype": str(local.dtype).removeprefix("torch.")}
        if local.numel():
            tensors[key] = local
    write_tensors(Path(tmp_dir), shard_file(name, rank, "safetensors"), tensors)
    write_json(Path(tmp_dir), shard_file(name, rank, "json"), {"ember_shards": FORMAT, "pieces": index})


class ShardReader:
    """Reads boxes of the tensors of state ``name`` from whatever ranks wrote them."""

    def __init__(self, ckpt_dir: Path, name: str) -> None:
        self.dir = Path(ckpt_dir)
        self.name = name
        folder = self.dir / name
        if not folder.is_dir():
            raise CheckpointError(f"{folder} does not exist: this checkpoint holds no sharded {name!r} state "
                                  "(was it saved by another strategy?). Resume with the strategy that saved it.")
        self.pieces: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        files = sorted(p.name for p in folder.iterdir() if _FILE.match(p.name))
        if not files:
            raise CheckpointError(f"{folder} holds no shard index (shard-r*.json): the checkpoint is incomplete.")
        for index_name in files:
            index = read_json(self.dir, f"{name}/{index_name}")
            if not isinstance(index, dict) or index.get("ember_shards") != FORMAT:
                raise CheckpointError(f"{folder / index_name} is not an ember shard index (format {FORMAT}).")
            data = f"{name}/{index_name[:-5]}.safetensors"
            for key, entry in index["pieces"].items():
                self.pieces.setdefault(key, []).append((data, entry))
        self._open: dict[str, Any] = {}

    def keys(self) -> list[str]:
        return sorted(self.pieces)

    def shape(self, key: str) -> list[int]:
        return list(self._entries(key)[0][1]["shape"])

    def dtype(self, key: str) -> torch.dtype:
        return getattr(torch, self._entries(key)[0][1]["dtype"])  # type: ignore[no-any-return]

    def _entries(self, key: str) -> list[tuple[str, dict[str, Any]]]:
        if key not in self.pieces:
            raise CheckpointError(f"{self.dir / self.name} has no tensor {key!r}; it holds {self.keys()[:8]}... "
                                  "Resume with the same model (and optimizer) as the run that saved it.")
        return self.pieces[key]

    def read(self, key: str, offset: Sequence[int] | None = None, size: Sequence[int] | None = None) -> torch.Tensor:
        """The box ``[offset, offset + size)`` of tensor ``key`` (default: all of it), assembled from the pieces."""
        shape = self.shape(key)
        offset = [0] * len(shape) if offset is None else list(offset)
        size = shape if size is None else list(size)
        out = torch.empty(size, dtype=self.dtype(key))
        if not out.numel():
            return out
        covered = 0
        for data, entry in self._entries(key):
            lo = [max(o, p) for o, p in zip(offset, entry["offset"])]
            hi = [min(o + s, p + q) for o, s, p, q in zip(offset, size, entry["offset"], entry["size"])]
            if any(a >= b for a, b in zip(lo, hi)):
                continue
            src = tuple(slice(a - p, b - p) for a, b, p in zip(lo, hi, entry["offset"]))
            dst = tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, offset))
            part = self._handle(data).get_slice(key)[src]
            out[dst] = part
            covered += part.numel()
        if covered != out.numel():
            raise CheckpointError(f"{self.dir / self.name}: the saved pieces of {key!r} cover {covered} of the "
                                  f"{out.numel()} elements asked for: shard files are missing.")
        return out

    def _handle(self, data: str) -> Any:
        if data not in self._open:
            from safetensors import safe_open

            path = member_path(self.dir, data)
            with open(path, "rb") as f:
                if f.read(2) in _PICKLE_MAGIC:
                    raise CheckpointError(f"{path} is a pickle, not a safetensors file; ember never unpickles "
                                          "checkpoint data. Re-save it with ember.")
            try:
                self._open[data] = safe_open(str(path), framework="pt")
            except Exception as exc:
                raise CheckpointError(f"{path} could not be read as safetensors ({exc}): the file is corrupted or "
                                      "truncated; resume from an earlier checkpoint.") from exc
        return self._open[data]


def describe(ckpt_dir: Path, name: str) -> dict[str, Any]:
    """Summary of a sharded state (which ranks wrote pieces, how many tensors), for messages and tests."""
    reader = ShardReader(ckpt_dir, name)
    writers = sorted({data for entries in reader.pieces.values() for data, _ in entries})
    return {"files": writers, "tensors": len(reader.pieces)}


__all__ = ["ShardReader", "describe", "read_model_weights", "save_shards"]


def read_model_weights(ckpt_dir: Path, name: str = "model") -> dict[str, torch.Tensor]:
    """A model's full weights from a checkpoint, whichever way it was written: ``<name>.safetensors`` (replicated
    strategies) or the shards under ``<name>/`` (FSDP), assembled on the CPU one tensor at a time.

    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from ember.checkpoint import begin
    >>> tmp = begin(Path(tempfile.mkdtemp()) / "step-00000001")
    >>> save_shards(tmp, "model", 0, {"w": (torch.zeros(2), (4,), (0,))})
    >>> save_shards(tmp, "model", 1, {"w": (torch.ones(2), (4,), (2,))})
    >>> read_model_weights(tmp)["w"]
    tensor([0., 0., 1., 1.])
    """
    from ._tensors import read_tensors

    ckpt_dir = Path(ckpt_dir)
    if (ckpt_dir / f"{name}.safetensors").is_file() or not (ckpt_dir / name).is_dir():
        return read_tensors(ckpt_dir, f"{name}.safetensors")
    reader = ShardReader(ckpt_dir, name)
    return {key: reader.read(key) for key in sorted(reader.pieces)}
