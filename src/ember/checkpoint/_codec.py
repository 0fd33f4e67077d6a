"""State codec: nested Python state <-> (JSON skeleton, flat dict of tensors). No pickle anywhere.

Plain JSON values stay as they are. Everything JSON cannot say exactly becomes a small tagged object
``{"__ember__": <kind>, ...}``:

=========  ==================================================  ======================================
kind       fields                                              decodes to
=========  ==================================================  ======================================
tuple      ``items``: [values]                                 ``tuple`` (tuple subclasses included)
dict       ``items``: [[key, value], ...]                      ``dict`` with int/float/bool/None/tuple
                                                               keys (or a str key named ``__ember__``)
float      ``value``: "nan" / "inf" / "-inf"                   non-finite ``float``
tensor     ``key``; ``complex`` (bool, optional)               the tensor stored under ``key``
ndarray    ``key``, ``dtype`` (numpy dtype str);               ``numpy.ndarray`` with that dtype
           ``complex`` (optional)
np         ``dtype``, ``value``                                numpy scalar (bool/int/float kinds)
dtype      ``name``                                            ``torch.<name>``
device     ``value``                                           ``torch.device(value)``
bytes      ``b64``                                             ``bytes``
=========  ==================================================  ======================================

Dicts with only str keys are plain JSON objects; lists are plain JSON arrays. The same tensor object seen
twice is stored once and decodes to one shared tensor.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ._errors import CheckpointError

TAG = "__ember__"

_KEY_TYPES = (str, int, float, bool, type(None), tuple)


def _np_ok(dtype: np.dtype[Any], *, arrays: bool) -> bool:
    """Numpy dtypes we store: bool/int/uint, float up to 64 bits, complex up to 128 bits (arrays only)."""
    if dtype.fields is not None or dtype.subdtype is not None:
        return False
    if dtype.kind in "biu":
        return True
    return (dtype.kind == "f" and dtype.itemsize <= 8) or (
        arrays and dtype.kind == "c" and dtype.itemsize <= 16
    )


def _where(root: str, path: tuple[Any, ...]) -> str:
    return root + "".join(f"[{p!r}]" for p in path)


class _Encoder:
    def __init__(self, root: str) -> None:
        self.root = root
        self.tensors: dict[str, torch.Tensor] = {}
        self._by_id: dict[int, str] = {}
        self._stack: set[int] = set()

    def fail(self, path: tuple[Any, ...], what: str) -> CheckpointError:
        return CheckpointError(
            f"cannot checkpoint {_where(self.root, path)}: {what}. Checkpoints hold data, never code: "
            "use dict/list/tuple/int/float/str/bool/None, torch tensors, numpy arrays, torch.dtype/device "
            "(turn other objects into these in your state_dict())."
        )

    def _key(self, path: tuple[Any, ...]) -> str:
        base = ".".join(str(p) for p in path) or self.root
        key, n = base, 1
        while key in self.tensors:
            key, n = f"{base}~{n}", n + 1
        return key

    def encode(self, obj: Any, path: tuple[Any, ...]) -> Any:
        if obj is None or isinstance(obj, bool):
            return obj
        if isinstance(obj, np.generic) and _np_ok(obj.dtype, arrays=False):
            return {TAG: "np", "dtype": obj.dtype.str, "value": self.encode(obj.item(), path)}
        if isinstance(obj, int):
            return int(obj)
        if isinstance(obj, float):
            value = float(obj)
            if math.isfinite(value):
                return value
            return {TAG: "float", "value": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
        if isinstance(obj, str):
            return str(obj)
        if isinstance(obj, torch.Tensor):
            return self._tensor(obj, path)
        if isinstance(obj, np.ndarray):
            return self._ndarray(obj, path)
        if isinstance(obj, torch.dtype):
            return {TAG: "dtype", "name": str(obj).removeprefix("torch.")}
        if isinstance(obj, torch.device):
            return {TAG: "device", "value": str(obj)}
        if isinstance(obj, bytes | bytearray):
            return {TAG: "bytes", "b64": base64.b64encode(bytes(obj)).decode("ascii")}
        if isinstance(obj, Mapping | list | tuple):
            if id(obj) in self._stack:
                raise self.fail(path, "it contains itself (a reference cycle)")
            self._stack.add(id(obj))
            try:
                return self._container(obj, path)
            finally:
                self._stack.discard(id(obj))
        raise self.fail(
            path, f"objects of type {type(obj).__module__}.{type(obj).__qualname__} are not supported"
        )

    def _container(self, obj: Mapping[Any, Any] | list[Any] | tuple[Any, ...], path: tuple[Any, ...]) -> Any:
        if isinstance(obj, list):
            return [self.encode(v, (*path, i)) for i, v in enumerate(obj)]
        if isinstance(obj, tuple):
            return {TAG: "tuple", "items": [self.encode(v, (*path, i)) for i, v in enumerate(obj)]}
        if all(type(k) is str for k in obj) and TAG not in obj:
            return {k: self.encode(v, (*path, k)) for k, v in obj.items()}
        items = []
        for k, v in obj.items():
            if not isinstance(k, _KEY_TYPES) or isinstance(k, np.generic):
                raise self.fail(path, f"dict key {k!r} of type {type(k).__qualname__} is not supported")
            items.append([self.encode(k, (*path, k)), self.encode(v, (*path, k))])
        return {TAG: "dict", "items": items}

    def _tensor(self, obj: torch.Tensor, path: tuple[Any, ...]) -> Any:
        if type(obj) is not torch.Tensor and not isinstance(obj, torch.nn.Parameter):
            raise self.fail(
                path,
                f"tensor subclass {type(obj).__qualname__} is not supported (convert it to a plain tensor, "
                "e.g. DTensor.full_tensor(), or save it with the strategy's sharded format)",
            )
        if obj.layout != torch.strided or obj.is_quantized:
            raise self.fail(path, f"{obj.layout} / quantized tensors are not supported (use .to_dense())")
        if obj.device.type == "meta":
            raise self.fail(path, "meta tensors hold no data")
        seen = self._by_id.get(id(obj))
        is_complex = obj.dtype == torch.complex128
        if seen is None:
            seen = self._key(path)
            data = obj.detach()
            self.tensors[seen] = torch.view_as_real(data.resolve_conj()) if is_complex else data
            self._by_id[id(obj)] = seen
        return {TAG: "tensor", "key": seen, **({"complex": True} if is_complex else {})}

    def _ndarray(self, arr: np.ndarray[Any, Any], path: tuple[Any, ...]) -> Any:
        dtype = arr.dtype
        if not _np_ok(dtype, arrays=True):
            raise self.fail(path, f"numpy arrays of dtype {dtype} are not supported")
        native = arr.astype(dtype.newbyteorder("="), order="C", copy=False)
        if not native.flags.writeable:
            native = native.copy()
        tensor = torch.from_numpy(native)
        is_complex = tensor.dtype == torch.complex128
        key = self._key(path)
        self.tensors[key] = torch.view_as_real(tensor) if is_complex else tensor
        return {TAG: "ndarray", "key": key, "dtype": dtype.str, **({"complex": True} if is_complex else {})}


def flatten_state(obj: Any, *, root: str = "state") -> tuple[Any, dict[str, torch.Tensor]]:
    """Split ``obj`` into a JSON-serialisable skeleton and a flat ``{key: tensor}`` dict.

    Tensors are detached but not copied (write_tensors copies to CPU / contiguous memory one at a time);
    ``root`` only names the object in error messages and the generated tensor keys of a bare tensor.
    Unsupported objects raise :class:`CheckpointError` naming their place, e.g. ``state['sched'][0]``.

    Example:
        >>> import torch
        >>> from ember.checkpoint import flatten_state, unflatten_state
        >>> skeleton, tensors = flatten_state({"step": 3, "w": torch.ones(2), 0: (1.5, None)})
        >>> sorted(tensors)
        ['w']
        >>> unflatten_state(skeleton, tensors)[0]
        (1.5, None)
    """
    encoder = _Encoder(root)
    skeleton = encoder.encode(obj, ())
    return skeleton, encoder.tensors


class _Decoder:
    def __init__(self, tensors: Mapping[str, torch.Tensor], root: str) -> None:
        self.tensors = tensors
        self.root = root

    def fail(self, path: tuple[Any, ...], what: str) -> CheckpointError:
        return CheckpointError(
            f"checkpoint state {_where(self.root, path)} is malformed: {what}. The file is corrupted, was not "
            "written by ember, or was written by a newer ember version (upgrade ember)."
        )

    def decode(self, node: Any, path: tuple[Any, ...]) -> Any:
        if node is None or isinstance(node, bool | int | float | str):
            return node
        if isinstance(node, list):
            return [self.decode(v, (*path, i)) for i, v in enumerate(node)]
        if not isinstance(node, dict):
            raise self.fail(path, f"unexpected {type(node).__qualname__}")
        if TAG not in node:
            return {k: self.decode(v, (*path, k)) for k, v in node.items()}
        try:
            return self._tagged(node, path)
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
            raise self.fail(path, f"bad {node.get(TAG)!r} entry ({type(exc).__name__}: {exc})") from exc

    def _tagged(self, node: dict[str, Any], path: tuple[Any, ...]) -> Any:
        kind = node[TAG]
        if kind == "tuple":
            return tuple(self.decode(v, (*path, i)) for i, v in enumerate(node["items"]))
        if kind == "dict":
            out: dict[Any, Any] = {}
            for k_node, v_node in node["items"]:
                key = self.decode(k_node, path)
                out[key] = self.decode(v_node, (*path, key))
            return out
        if kind == "float":
            return {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}[node["value"]]
        if kind == "tensor":
            tensor = self._lookup(node["key"], path)
            return torch.view_as_complex(tensor) if node.get("complex") else tensor
        if kind == "ndarray":
            tensor = self._lookup(node["key"], path)
            if node.get("complex"):
                tensor = torch.view_as_complex(tensor)
            dtype = np.dtype(str(node["dtype"]))
            if not _np_ok(dtype, arrays=True):
                raise self.fail(path, f"unsupported numpy dtype {dtype}")
            return tensor.cpu().numpy().astype(dtype, copy=False)
        if kind == "np":
            dtype = np.dtype(str(node["dtype"]))
            if not _np_ok(dtype, arrays=False):
                raise self.fail(path, f"unsupported numpy dtype {dtype}")
            return dtype.type(self.decode(node["value"], path))
        if kind == "dtype":
            dt = getattr(torch, str(node["name"]), None)
            if not isinstance(dt, torch.dtype):
                raise self.fail(path, f"unknown torch dtype {node['name']!r}")
            return dt
        if kind == "device":
            return torch.device(str(node["value"]))
        if kind == "bytes":
            return base64.b64decode(str(node["b64"]), validate=True)
        raise self.fail(path, f"unknown entry kind {kind!r}")

    def _lookup(self, key: Any, path: tuple[Any, ...]) -> torch.Tensor:
        tensor = self.tensors.get(key) if isinstance(key, str) else None
        if tensor is None:
            raise self.fail(path, f"tensor {key!r} is missing from the tensor file")
        return tensor


def unflatten_state(skeleton: Any, tensors: Mapping[str, torch.Tensor], *, root: str = "state") -> Any:
    """Rebuild the object that :func:`flatten_state` split into ``skeleton`` and ``tensors``.

    Tensors come back as they are in ``tensors`` (CPU after :func:`read_tensors`); dict keys, tuples,
    numpy dtypes and non-finite floats come back exactly.

    Example:
        >>> import numpy as np
        >>> from ember.checkpoint import flatten_state, unflatten_state
        >>> obj = ("MT19937", np.arange(3, dtype=np.uint32), {1: float("inf")})
        >>> back = unflatten_state(*flatten_state(obj))
        >>> back[1].dtype, back[2]
        (dtype('uint32'), {1: inf})
    """
    return _Decoder(tensors, root).decode(skeleton, ())
