"""Small helpers shared by the logger implementations (private)."""

from __future__ import annotations

import difflib
import enum
import importlib.util
import os
from argparse import Namespace
from collections.abc import Iterable, Mapping
from pathlib import PurePath
from typing import Any

STATUSES = ("success", "failed", "interrupted")

_PLAIN = (bool, int, float, str, type(None))


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest choice, or ``""`` when nothing is close."""
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def require(module: str, extra: str, what: str) -> None:
    """Fail early, with the install command, when an optional dependency is missing."""
    if importlib.util.find_spec(module) is None:
        raise ModuleNotFoundError(
            f"{what} needs the `{module}` package, which is not installed. "
            f"Install it with `pip install ember[{extra}]`."
        )


def check_status(status: str) -> str:
    """Validate a ``finalize`` status string."""
    if status not in STATUSES:
        raise ValueError(
            f"Unknown finalize status {status!r}; expected one of {', '.join(STATUSES)}."
            + did_you_mean(status, STATUSES)
        )
    return status


def convert_params(params: Mapping[str, Any] | Namespace | None) -> dict[str, Any]:
    """Turn an ``argparse.Namespace`` (or ``None``) into a plain dict."""
    if params is None:
        return {}
    if isinstance(params, Namespace):
        return dict(vars(params))
    return dict(params)


def flatten_dict(params: Mapping[Any, Any], delimiter: str = "/", parent_key: str = "") -> dict[str, Any]:
    """Flatten nested mappings (and Namespaces): ``{"a": {"b": 1}}`` -> ``{"a/b": 1}``."""
    result: dict[str, Any] = {}
    for key, value in params.items():
        new_key = f"{parent_key}{delimiter}{key}" if parent_key else str(key)
        if isinstance(value, Namespace):
            value = vars(value)
        if isinstance(value, Mapping):
            result.update(flatten_dict(value, delimiter, new_key))
        else:
            result[new_key] = value
    return result


def to_plain(value: Any) -> Any:
    """Convert a value into something YAML/JSON can store safely: plain scalars, lists and dicts.

    Anything else (paths, enums, callables, tensors, arbitrary objects) becomes ``str(value)``
    (enums become their ``name``).
    """
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, Namespace):
        value = vars(value)
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, PurePath):
        return os.fspath(value)
    if callable(value):
        return getattr(value, "__qualname__", None) or getattr(value, "__name__", None) or str(value)
    return str(value)


def to_number(key: str, value: Any) -> float | int:
    """Return ``value`` as a Python number, or raise a ``TypeError`` that names the metric.

    Zero-dim tensors and numpy scalars are accepted through ``.item()`` (callers should convert
    once per log interval; this is a fallback, not the hot path).
    """
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return value
    item = getattr(value, "item", None)
    if callable(item):
        try:
            out = item()
        except (RuntimeError, ValueError) as err:
            raise TypeError(f"Metric {key!r} is not a scalar ({type(value).__name__}): {err}") from err
        if isinstance(out, (bool, int, float)):
            return int(out) if isinstance(out, bool) else out
    raise TypeError(
        f"Metric {key!r} has a value of type {type(value).__name__}; loggers take numbers. "
        "Log floats/ints (convert tensors with .item() once per log interval)."
    )


def add_prefix(metrics: Mapping[str, Any], prefix: str, separator: str) -> dict[str, Any]:
    """Prefix every metric key: ``add_prefix({"loss": 1}, "train", "-")`` -> ``{"train-loss": 1}``."""
    if not prefix:
        return dict(metrics)
    return {f"{prefix}{separator}{k}": v for k, v in metrics.items()}


def next_version(root: str) -> int:
    """The next free ``version_N`` number under ``root`` (0 when ``root`` does not exist)."""
    try:
        entries = os.listdir(root)
    except OSError:
        return 0
    found = [
        int(entry[len("version_") :])
        for entry in entries
        if entry.startswith("version_")
        and entry[len("version_") :].isdigit()
        and os.path.isdir(os.path.join(root, entry))
    ]
    return max(found) + 1 if found else 0


def check_state(state: Mapping[str, Any], expected: str) -> None:
    """Make sure a logger state dict was produced by the same logger class."""
    kind = state.get("logger")
    if kind != expected:
        raise ValueError(
            f"Cannot load a state_dict from {kind!r} into {expected}: the resumed run must use the same "
            "logger classes, in the same order, as the run that saved the checkpoint."
        )
