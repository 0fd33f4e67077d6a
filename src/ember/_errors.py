"""Errors that speak to people: every message names the argument, the valid values and the fix."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class EmberConfigError(ValueError):
    """A bad argument or an impossible combination, found before any work is done."""


def did_you_mean(value: str, valid: Iterable[str]) -> str:
    """Return ' Did you mean "x"?' for the closest valid string, or an empty string."""
    matches = difflib.get_close_matches(str(value).lower(), [v.lower() for v in valid], n=1, cutoff=0.5)
    if not matches:
        return ""
    lookup = {v.lower(): v for v in valid}
    return f' Did you mean "{lookup[matches[0]]}"?'


def unknown_value(argument: str, value: object, valid: Iterable[str]) -> EmberConfigError:
    """Build the error for an unknown string ``value`` passed as ``argument``."""
    valid = list(valid)
    listed = ", ".join(f'"{v}"' for v in valid)
    return EmberConfigError(
        f"{argument}={value!r} is not a valid value.{did_you_mean(str(value), valid)} Valid values: {listed}."
    )
