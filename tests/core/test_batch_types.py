"""Batches of any nesting reach the device with their types: dicts, lists, tuples, namedtuples, BatchEncoding."""

from __future__ import annotations

from collections import namedtuple
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

from ember import Accelerator
from ember.data import find_batch_size, move_to_device

Pair = namedtuple("Pair", ["x", "y"])


def test_nested_structures_keep_their_types() -> None:
    batch = {"a": [torch.ones(2), (torch.zeros(2, 3), "text")], "p": Pair(torch.ones(4, 1), 3)}
    moved = move_to_device(batch, torch.device("cpu"))
    assert isinstance(moved["a"], list) and isinstance(moved["a"][1], tuple) and moved["a"][1][1] == "text"
    assert isinstance(moved["p"], Pair) and moved["p"].y == 3
    assert find_batch_size(batch) == 2


def test_batch_encoding_through_a_prepared_loader_in_bf16_true() -> None:
    transformers = pytest.importorskip("transformers", reason="BatchEncoding comes from transformers")

    def collate(items: list[Any]) -> Any:
        ids = torch.stack([torch.tensor(i) for i in items])
        return transformers.BatchEncoding({"input_ids": ids, "attention_mask": torch.ones(ids.shape)})

    acc = Accelerator(cpu=True, mixed_precision="bf16-true", verbose=False)
    loader = acc.prepare(DataLoader([[1, 2, 3]] * 6, batch_size=4, collate_fn=collate))
    batches = list(loader)
    assert [type(b).__name__ for b in batches] == ["BatchEncoding", "BatchEncoding"]
    assert batches[0].input_ids.dtype == torch.int64  # integer inputs are never converted
    assert batches[0]["attention_mask"].dtype == torch.bfloat16  # floating inputs follow the true precision
    assert [b.input_ids.shape[0] for b in batches] == [4, 2]
