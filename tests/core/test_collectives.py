"""Accelerator collectives on 2 real gloo processes: reduce, gather (nested, uneven), pad, broadcast,
split_between_processes, main_process_first, save_model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

WORKER = Path(__file__).parent / "_workers" / "collectives_worker.py"


@pytest.mark.timeout(240)
def test_collectives_on_two_ranks(tmp_path: Path, tools: Any) -> None:
    tools.run([*tools.EMBER, "launch", "--cpu", "--num_processes", "2", WORKER, tmp_path])
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    for res in (r0, r1):
        assert res["world"] == 2
        assert res["reduce_sum"] == [3.0] and res["reduce_mean"] == [1.5] and res["reduce_max"] == [2.0]
        assert res["gather_nested"] == {"a": [0, 1], "b": [[0, 0], [1, 1]]}
        assert res["gather_uneven"] == [0, 0, 1]  # rank 0 holds [0], rank 1 holds [0, 1]
        assert res["broadcast_tensor"] == [10.0]  # from the last process
        assert res["broadcast_object"] == {"from": 0}
        assert res["marker_seen"] is True
    assert r0["pad"] == [1.0, -1.0] and r1["pad"] == [1.0, 1.0]
    assert r0["pad_first"] == [-1.0, 1.0]
    assert r0["split_list"] == [0, 1, 2] and r1["split_list"] == [3, 4]
    assert r0["split_dict_padded"] == {"x": ["a", "b", "c"]} and r1["split_dict_padded"] == {"x": ["d", "e", "e"]}
    assert r0["split_tensor"] == [0, 1, 2] and r1["split_tensor"] == [3, 4, 5]
    weights = load_file(r0["save_model"])
    assert set(weights) == {"weight", "bias"}  # unwrapped: no "module." prefix from DDP
    assert torch.equal(weights["weight"], torch.full((2, 3), 0.5))
