"""The state codec: nested state <-> JSON skeleton + flat tensors, exact round trips, no pickle."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ember.checkpoint import CheckpointError, begin, flatten_state, load_state, save_state, unflatten_state


def assert_same(a: Any, b: Any, where: str = "state") -> None:
    """Exact structural equality: same types, keys (incl. int vs str), dtypes, shapes and values."""
    assert type(a) is type(b), f"{where}: {type(a)} != {type(b)}"
    if isinstance(a, dict):
        assert list(a) == list(b), f"{where}: keys {list(a)} != {list(b)}"
        for k in a:
            assert type(k) is type(next(x for x in b if x == k)), f"{where}: key type of {k!r}"
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a.cpu(), b.cpu()) or (
            a.is_floating_point() and torch.allclose(a, b, equal_nan=True)
        ), where
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def disk_round_trip(obj: Any) -> Any:
    """What a checkpoint does: skeleton through JSON text, tensors as they are."""
    skeleton, tensors = flatten_state(obj)
    text = json.dumps(skeleton, allow_nan=False)  # strict JSON: no NaN/Infinity literals
    return unflatten_state(json.loads(text), tensors)


def file_round_trip(tmp_path: Path, obj: Any, name: str = "thing") -> Any:
    tmp = begin(tmp_path / "step-00000001")
    save_state(tmp, name, obj)
    return load_state(tmp, name)


def test_plain_values_and_tricky_containers_round_trip() -> None:
    obj: dict[str, Any] = {
        "none": None,
        "bools": [True, False],
        "ints": [0, -1, 2**70],
        "floats": [0.1, -0.0, 1e300, math.inf, -math.inf, math.nan],
        "str": "héllo",
        "tuple": (1, (2, 3), []),
        "empty": ((), {}, []),
        "int_keys": {0: "a", 1: {"x": 2}, -5: None},
        "mixed_keys": {"a": 1, 2: "b", (3, "c"): 4, None: 5, 1.5: 6, True: 7},
        "__ember__": "a user key that looks like our tag",
        "bytes": b"\x00\xff",
        "dtypes": [torch.float32, torch.bfloat16, torch.int64],
        "device": torch.device("cpu"),
        "np_scalars": [np.float32(0.1), np.int64(-3), np.bool_(True), np.uint8(255), np.float64(math.nan)],
    }
    back = disk_round_trip(obj)
    assert_same(obj, back)
    assert back["floats"][1] == 0.0 and math.copysign(1.0, back["floats"][1]) == -1.0
    assert type(back["np_scalars"][0]) is np.float32 and back["np_scalars"][0] == np.float32(0.1)
    assert back["mixed_keys"][True] == 7 and type(next(k for k in back["mixed_keys"] if k is True)) is bool


def test_skeleton_is_strict_json_and_tensors_are_flat() -> None:
    skeleton, tensors = flatten_state({"w": torch.ones(2), "opt": {"state": {0: {"m": torch.zeros(3)}}}})
    json.dumps(skeleton, allow_nan=False)
    assert set(tensors) == {"w", "opt.state.0.m"}
    assert all(isinstance(t, torch.Tensor) for t in tensors.values())


def test_tensor_dtypes_and_shapes(tmp_path: Path) -> None:
    obj = {
        "bf16": torch.randn(3, 4).to(torch.bfloat16),
        "f16": torch.randn(5).half(),
        "f64": torch.randn(2, 2, dtype=torch.float64),
        "i8": torch.tensor([-128, 127], dtype=torch.int8),
        "u8": torch.arange(256, dtype=torch.uint8),
        "bool": torch.tensor([True, False]),
        "c64": torch.randn(3, dtype=torch.complex64),
        "c128": torch.randn(3, dtype=torch.complex128),
        "scalar": torch.tensor(3.5),
        "empty": torch.empty(0, 7),
        "nan": torch.tensor([math.nan, math.inf]),
        "param": torch.nn.Parameter(torch.ones(2)),
    }
    back = file_round_trip(tmp_path, obj)
    obj["param"] = obj["param"].detach()  # a Parameter comes back as its data
    assert_same(obj, back)


def test_views_shared_storage_and_non_contiguous_tensors(tmp_path: Path) -> None:
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    obj = {
        "base": base,
        "row": base[1],  # a view sharing base's storage
        "col": base[:, 2],  # non-contiguous view
        "t": base.t(),  # transposed
        "slice": base.view(-1)[5:9],  # offset into the storage
        "expanded": torch.ones(1, 3).expand(4, 3),  # stride 0
        "same": base,  # the very same tensor again
        "conj": torch.randn(2, dtype=torch.complex64).conj(),
    }
    expected = {k: v.clone() if k != "same" else v for k, v in obj.items()}
    back = file_round_trip(tmp_path, obj)
    for key in obj:
        assert torch.equal(back[key], expected[key].resolve_conj()), key
        assert back[key].shape == obj[key].shape
    assert back["same"] is back["base"]  # aliasing of identical objects is kept
    back["row"][0] = -1.0  # ...but views are independent copies after loading
    assert back["base"][1, 0] == 6.0


def test_numpy_arrays_round_trip_with_dtype(tmp_path: Path) -> None:
    obj: list[np.ndarray[Any, Any]] = [
        np.arange(6, dtype=np.uint32).reshape(2, 3),
        np.array([1.5, -2.0], dtype=np.float16),
        np.array([True, False]),
        np.arange(4, dtype=">u4"),  # big-endian
        np.array(7, dtype=np.int64),  # 0-d
        np.array([1 + 2j], dtype=np.complex128),
        np.arange(10, dtype=np.float64)[::3],  # non-contiguous
    ]
    back = file_round_trip(tmp_path, obj)
    assert type(back) is list
    for a, b in zip(obj, back):
        assert isinstance(b, np.ndarray)
        assert b.dtype == a.dtype and b.shape == a.shape
        np.testing.assert_array_equal(a, b)


def test_adamw_state_dict_round_trip_resumes_identically(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.95), weight_decay=0.1)
    model(torch.randn(8, 4)).pow(2).mean().backward()
    opt.step()
    state = opt.state_dict()
    back = file_round_trip(tmp_path, state, "optimizer")
    assert_same(state, back)
    assert all(type(k) is int for k in back["state"])
    assert back["param_groups"][0]["betas"] == (0.8, 0.95)

    twin = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    twin.load_state_dict(model.state_dict())
    twin_opt = torch.optim.AdamW(twin.parameters(), lr=0.5)
    twin_opt.load_state_dict(back)
    batch = torch.randn(8, 4)
    for m, o in ((model, opt), (twin, twin_opt)):
        o.zero_grad()
        m(batch).pow(2).mean().backward()
        o.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


def test_rng_states_round_trip(tmp_path: Path) -> None:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "generator": np.random.default_rng(3).bit_generator.state,
    }
    back = file_round_trip(tmp_path, state, "state-rank0")
    assert_same(state, back)
    assert back["python"] == random.getstate()
    assert type(back["numpy"]) is tuple and back["numpy"][1].dtype == np.uint32

    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.setstate(back["python"])
    np.random.set_state(back["numpy"])
    torch.set_rng_state(back["torch"])
    assert (random.random(), np.random.rand()) == expected[:2]
    assert torch.equal(torch.rand(1), expected[2])


def test_scheduler_and_grad_scaler_state_round_trip(tmp_path: Path) -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5**step)
    opt.step()
    sched.step()
    scaler = torch.amp.GradScaler("cpu")
    state = {"sched": sched.state_dict(), "scaler": scaler.state_dict()}
    back = file_round_trip(tmp_path, state)
    assert_same(state, back)
    fresh = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5**step)
    fresh.load_state_dict(back["sched"])
    assert fresh.last_epoch == sched.last_epoch and fresh.get_last_lr() == sched.get_last_lr()


def test_model_state_dict_keys_are_readable_tensor_names() -> None:
    model = torch.nn.Linear(2, 2)
    _, tensors = flatten_state(model.state_dict())
    assert set(tensors) == {"weight", "bias"}


@pytest.mark.parametrize(
    ("obj", "where", "what"),
    [
        ({"sched": {"lr_lambdas": [lambda s: s]}}, "state['sched']['lr_lambdas'][0]", "function"),
        ({"a": [1, {2}]}, "state['a'][1]", "set"),
        ({"a": object()}, "state['a']", "object"),
        ({"a": {object(): 1}}, "state['a']", "dict key"),
        ({"a": np.array(["x"], dtype=object)}, "state['a']", "dtype object"),
        ({"a": torch.ones(2).to_sparse()}, "state['a']", "sparse"),
        ({"a": torch.empty(2, device="meta")}, "state['a']", "meta"),
        ({"a": 1j}, "state['a']", "complex"),
    ],
)
def test_unsupported_objects_name_their_place(obj: Any, where: str, what: str) -> None:
    with pytest.raises(CheckpointError) as info:
        flatten_state(obj)
    message = str(info.value)
    assert where in message and what in message
    assert "never code" in message


def test_reference_cycle_is_an_error() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    with pytest.raises(CheckpointError, match=r"state\[1\].*cycle"):
        flatten_state(loop)


@pytest.mark.parametrize(
    "skeleton",
    [
        {"__ember__": "pickle", "data": "gASV"},
        {"__ember__": "tensor", "key": "missing"},
        {"__ember__": "dtype", "name": "manual_seed"},
        {"__ember__": "dict", "items": [[[1, 2], "unhashable key"]]},
        {"__ember__": "float", "value": "zero"},
        {"__ember__": "np", "dtype": "O", "value": 1},
    ],
)
def test_malformed_skeleton_is_a_checkpoint_error(skeleton: Any) -> None:
    with pytest.raises(CheckpointError, match="malformed"):
        unflatten_state({"x": skeleton}, {})
