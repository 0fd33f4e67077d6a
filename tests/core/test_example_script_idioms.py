"""Idioms of Accelerate's own example scripts, written as those scripts write them (imports from ``ember``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ember import (
    Accelerator,
    DataLoaderConfiguration,
    DDPCommunicationHookType,
    DistributedType,
    ProfileKwargs,
    find_executable_batch_size,
)


def test_top_level_names_of_the_examples_import_from_ember() -> None:
    accelerate = pytest.importorskip("accelerate")
    accelerator = Accelerator(cpu=True, dataloader_config=DataLoaderConfiguration(use_stateful_dataloader=True))
    assert accelerator.distributed_type == accelerate.DistributedType.NO == DistributedType.NO
    assert DDPCommunicationHookType("fp16").value == accelerate.DDPCommunicationHookType("fp16").value
    assert callable(find_executable_batch_size)


def test_comparisons_with_every_accelerate_distributed_type_run() -> None:
    accelerate_utils = pytest.importorskip("accelerate.utils")
    accelerator = Accelerator(cpu=True)
    max_length = 128 if accelerator.distributed_type == DistributedType.XLA else None  # nlp_example.py's collate_fn
    assert max_length is None
    for member in accelerate_utils.DistributedType:
        assert DistributedType[member.name] == member  # same names, equal values
        assert (accelerator.distributed_type == DistributedType[member.name]) == (member.name == "NO")


def test_profile_kwargs_passed_as_a_kwargs_handler_configure_profile(tmp_path: Path) -> None:
    profile_kwargs = ProfileKwargs(record_shapes=True, output_trace_dir=str(tmp_path))  # by_feature/profiler.py
    accelerator = Accelerator(cpu=True, kwargs_handlers=[profile_kwargs])
    with accelerator.profile() as prof:
        torch.ones(8, 16) @ torch.ones(16, 4)
    shapes = [e.input_shapes for e in prof.key_averages(group_by_input_shape=True) if e.key == "aten::mm"]
    assert [[8, 16], [16, 4]] in shapes  # record_shapes from the handler was honoured
    trace = json.loads((tmp_path / "trace_rank0.json").read_text())
    assert any(e.get("name") == "aten::mm" for e in trace["traceEvents"])
    explicit = tmp_path / "explicit"
    with accelerator.profile(ProfileKwargs(output_trace_dir=str(explicit))):  # an explicit argument wins
        torch.ones(2) + 1
    assert (explicit / "trace_rank0.json").exists()


def test_device_probe_of_complete_cv_example() -> None:
    from ember.utils import is_xpu_available

    accelerator = Accelerator(cpu=True)
    expected = hasattr(torch, "xpu") and torch.xpu.is_available()
    assert is_xpu_available() is expected
    if is_xpu_available():  # complete_cv_example.py's branch before `mean.to(accelerator.device)`
        pytest.skip("an XPU is present")
    assert accelerator.device.type == "cpu"
