"""Stand-in for ``evaluate.load("glue", "mrpc")`` (whose metric script is a hub download): accuracy and F1,
computed locally with the same ``add_batch`` / ``add`` / ``compute`` calls. Acceptance run only."""

from __future__ import annotations

from typing import Any


class _Metric:
    def __init__(self, name: str, config_name: str | None) -> None:
        self.name, self.config_name = name, config_name
        self._predictions: list[int] = []
        self._references: list[int] = []

    def add_batch(self, predictions: Any = None, references: Any = None, **_: Any) -> None:
        self._predictions += [int(p) for p in _flat(predictions)]
        self._references += [int(r) for r in _flat(references)]

    def add(self, prediction: Any = None, reference: Any = None, **_: Any) -> None:
        self.add_batch([prediction], [reference])

    def compute(self, predictions: Any = None, references: Any = None, **_: Any) -> dict[str, float]:
        if predictions is not None:
            self.add_batch(predictions, references)
        pairs = list(zip(self._predictions, self._references))
        self._predictions, self._references = [], []
        if not pairs:
            raise ValueError("compute() with no predictions added")
        accuracy = sum(p == r for p, r in pairs) / len(pairs)
        tp = sum(p == r == 1 for p, r in pairs)
        fp = sum(p == 1 and r == 0 for p, r in pairs)
        fn = sum(p == 0 and r == 1 for p, r in pairs)
        f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        return {"accuracy": accuracy, "f1": f1}


def _flat(values: Any) -> list[Any]:
    if hasattr(values, "tolist"):
        values = values.tolist()
    return list(values)


def load(path: str, config_name: str | None = None, *args: Any, **kwargs: Any) -> _Metric:
    """The GLUE metric (accuracy, F1) whatever the name: the scripts of the acceptance run only ask for GLUE MRPC."""
    return _Metric(path, config_name)
