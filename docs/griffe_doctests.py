"""A griffe extension for the API reference: doctest examples in docstrings become fenced ``pycon`` code.

ember's docstrings hold runnable ``>>>`` examples (checked by doctest). Outside a Google-style "Examples:" section
Markdown would read ``>>>`` as nested quotes and ``x["lr"]`` as a link reference; fencing each doctest block (from
its first ``>>>`` line to the next blank line) renders it as code. Used by mkdocs.yml (mkdocstrings' python handler).
"""

from __future__ import annotations

from typing import Any

from griffe import Extension, Object


def fence_doctests(text: str) -> str:
    """Wrap every run of lines that starts with ``>>>`` (up to a blank line) in a ```` ```pycon ```` fence.

    >>> print(fence_doctests("Example:\\n    >>> 1 + 1\\n    2\\n\\nText."))
    Example:
        ```pycon
        >>> 1 + 1
        2
        ```
    <BLANKLINE>
    Text.
    """
    out: list[str] = []
    indent: str | None = None
    in_fence = False
    for line in text.splitlines():
        stripped = line.lstrip()
        if stripped.startswith("```"):
            in_fence = not in_fence
        if indent is None and not in_fence and stripped.startswith(">>>"):
            indent = line[: len(line) - len(stripped)]
            out.append(f"{indent}```pycon")
        elif indent is not None and not stripped:
            out.append(f"{indent}```")
            indent = None
        out.append(line)
    if indent is not None:
        out.append(f"{indent}```")
    return "\n".join(out)


class DoctestFences(Extension):
    """Fence the doctest blocks of every object's docstring before it is parsed."""

    def on_object(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = fence_doctests(obj.docstring.value)
