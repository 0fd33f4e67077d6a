"""Datasets passed straight to the Trainer, as the Hugging Face Trainer takes them (for :meth:`ember.Module.wrap`).

``trainer.fit(L.Module.wrap(model, optimizer=..., batch_size=8), dataset)`` takes a map-style dataset (a
``datasets.Dataset``, a list of dicts, any ``torch.utils.data.Dataset``) where a DataLoader would go: the
wrapped module builds the loader (shuffled for training, in order for evaluation) with :class:`DataCollator`.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, default_collate

#: the label value Hugging Face losses ignore
IGNORE_INDEX = -100
_LABEL_ALIASES = ("label", "label_ids")


class DataCollator:
    """Batches rows of dicts the way the Hugging Face Trainer does for ``model``.

    - Columns ``model.forward`` does not take are dropped (the HF Trainer's ``remove_unused_columns``), after
      ``label`` / ``label_ids`` are renamed ``labels``.
    - Sequences of different lengths are padded on the right: ``input_ids`` with the model's
      ``config.pad_token_id`` (0 when unset), ``labels`` with -100 (ignored by the loss), everything else with 0;
      an ``attention_mask`` is built when the model takes one and the rows have none.
    - A causal language model (a class named ``...ForCausalLM`` / ``...LMHeadModel``) given no labels is
      trained on its inputs: ``labels`` are ``input_ids`` with -100 at the padding, as
      ``DataCollatorForLanguageModeling(mlm=False)`` makes them (the model shifts them itself).
    - Rows that are not dicts (tuples, tensors) go through PyTorch's ``default_collate``.

    >>> class TinyForCausalLM(torch.nn.Module):
    ...     def forward(self, input_ids, attention_mask=None, labels=None): ...
    >>> collate = DataCollator(TinyForCausalLM())
    >>> batch = collate([{"input_ids": [5, 6, 7], "text": "a"}, {"input_ids": [8]}])
    >>> sorted(batch), batch["input_ids"].tolist(), batch["labels"].tolist()
    (['attention_mask', 'input_ids', 'labels'], [[5, 6, 7], [8, 0, 0]], [[5, 6, 7], [8, -100, -100]])
    >>> DataCollator(TinyForCausalLM())([{"input_ids": [1, 2], "label": 1}, {"input_ids": [3, 4], "label": 0}])["labels"]
    tensor([1, 0])
    """

    def __init__(self, model: torch.nn.Module) -> None:
        params = inspect.signature(model.forward).parameters
        self.takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
        self.columns = {name for name, p in params.items() if p.kind != p.VAR_KEYWORD}
        pad = getattr(getattr(model, "config", None), "pad_token_id", None)
        self.pad_token_id = int(pad) if isinstance(pad, int) else 0
        self.causal_lm = type(model).__name__.endswith(("ForCausalLM", "LMHeadModel"))

    def __call__(self, rows: Sequence[Any]) -> Any:
        if not rows or not isinstance(rows[0], Mapping):
            return default_collate(list(rows))
        rows = [self._rename(row) for row in rows]
        keys = [k for k in rows[0] if self.takes_any or k in self.columns]
        batch = {k: self._stack(k, [row[k] for row in rows]) for k in keys if _is_data([row[k] for row in rows])}
        ids = batch.get("input_ids")
        if isinstance(ids, torch.Tensor) and ids.dim() == 2 and "attention_mask" in self.columns \
                and "attention_mask" not in batch:
            batch["attention_mask"] = _mask([row["input_ids"] for row in rows], ids.shape[1])
        if self.causal_lm and "labels" not in batch and isinstance(ids, torch.Tensor):
            mask = batch.get("attention_mask")
            batch["labels"] = ids.masked_fill(mask == 0, IGNORE_INDEX) if mask is not None else ids.clone()
        return batch

    @staticmethod
    def _rename(row: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(row)
        for alias in _LABEL_ALIASES:
            if alias in out and "labels" not in out:
                out["labels"] = out.pop(alias)
        return out

    def _stack(self, key: str, values: list[Any]) -> torch.Tensor:
        tensors = [torch.as_tensor(v) for v in values]
        if all(t.shape == tensors[0].shape for t in tensors):
            return torch.stack(tensors)
        fill = IGNORE_INDEX if key == "labels" else self.pad_token_id if key == "input_ids" else 0
        longest = max(t.shape[0] for t in tensors)
        out = torch.full((len(tensors), longest, *tensors[0].shape[1:]), fill, dtype=tensors[0].dtype)
        for i, t in enumerate(tensors):
            out[i, : t.shape[0]] = t
        return out


def _is_data(values: list[Any]) -> bool:
    """Numbers, tensors and (nested) lists of numbers are batched; strings and other objects are dropped."""
    first = values[0]
    while isinstance(first, (list, tuple)) and first:
        first = first[0]
    return isinstance(first, (int, float, bool, torch.Tensor)) or type(first).__module__ == "numpy"


def _mask(sequences: list[Any], length: int) -> torch.Tensor:
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for i, seq in enumerate(sequences):
        mask[i, : len(seq)] = 1
    return mask


def is_dataset(data: Any) -> bool:
    """A map-style dataset (``__getitem__`` and ``__len__``) or an iterable one, not already a DataLoader."""
    if isinstance(data, DataLoader):
        return False
    return isinstance(data, IterableDataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__")
                                                 and not isinstance(data, (Mapping, str, bytes)))


def loader_for(dataset: Any, collate: DataCollator, batch_size: int, train: bool) -> DataLoader[Any]:
    """The DataLoader the HF Trainer would build: shuffled for training (map-style data), in order otherwise."""
    shuffle = train and not isinstance(dataset, IterableDataset)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate)
