"""Everyday Accelerate idioms run on ember as Accelerate users write them, with only the import changed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

from ember import Accelerator
from ember.utils import (
    DistributedType,
    ProfileKwargs,
    ProjectConfiguration,
    find_executable_batch_size,
    is_schedulefree_available,
    set_seed,
)

WORKERS = Path(__file__).parent / "_workers"


def test_mixed_precision_and_distributed_type_compare_as_accelerate_s() -> None:
    accelerator = Accelerator(cpu=True, mixed_precision="bf16")
    weight_dtype = torch.float32  # the idiom of Accelerate's diffusion and LM scripts
    if accelerator.mixed_precision == "fp16":
        weight_dtype = torch.float16
    elif accelerator.mixed_precision == "bf16":
        weight_dtype = torch.bfloat16
    assert weight_dtype == torch.bfloat16
    assert Accelerator(cpu=True).mixed_precision == "no"  # nlp_example.py: `!= "no"` pads to multiples of 8
    assert accelerator.distributed_type == DistributedType.NO
    assert accelerator.precision.name == "bf16-mixed" and accelerator.strategy.name == "single"  # ember's names


def test_distributed_type_equals_accelerates_own_enum() -> None:
    accelerate_utils = pytest.importorskip("accelerate.utils")
    accelerator = Accelerator(cpu=True)
    assert accelerator.distributed_type == accelerate_utils.DistributedType.NO
    assert accelerator.distributed_type != accelerate_utils.DistributedType.MULTI_GPU
    assert accelerator.mixed_precision == accelerate_utils.PrecisionType.NO


def test_optimizer_steps_sizes_a_schedule_before_and_after_prepare() -> None:
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2, verbose=False)
    loader = DataLoader(torch.zeros(50, 2), batch_size=4)  # 13 batches → 7 optimizer steps per epoch
    before = accelerator.optimizer_steps(loader, epochs=3)
    prepared = accelerator.prepare(loader)
    assert before == accelerator.optimizer_steps(prepared, epochs=3) == 21


def test_save_is_a_save_function_for_save_pretrained(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import load_file

    accelerator = Accelerator(cpu=True, verbose=False)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32,
                                                                  n_positions=16))
    model = accelerator.prepare(model)
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.save_pretrained(tmp_path / "out", is_main_process=accelerator.is_main_process,
                              save_function=accelerator.save, state_dict=accelerator.get_state_dict(model))
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert "config.json" in files
    weights = [f for f in files if f.endswith(".safetensors")]
    assert weights, files
    state = load_file(str(tmp_path / "out" / weights[0]))
    assert torch.equal(state["transformer.wte.weight"], unwrapped.transformer.wte.weight)
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out")
    assert torch.equal(reloaded.transformer.h[0].mlp.c_fc.weight, unwrapped.transformer.h[0].mlp.c_fc.weight)


def test_process_decorators_and_state() -> None:
    accelerator = Accelerator(cpu=True)
    calls = []

    @accelerator.on_main_process
    def log_main() -> None:
        calls.append("main")

    @accelerator.on_local_main_process
    def log_local() -> None:
        calls.append("local")

    @accelerator.on_process(process_index=0)
    def log_zero() -> None:
        calls.append("zero")

    @accelerator.on_process(process_index=1)
    def log_one() -> None:
        calls.append("one")

    log_main(), log_local(), log_zero(), log_one()
    assert calls == ["main", "local", "zero"]
    assert accelerator.state.distributed_type == DistributedType.NO and accelerator.state.num_processes == 1


def test_project_configuration_keeps_total_limit_checkpoints(tmp_path: Path) -> None:
    config = ProjectConfiguration(project_dir=str(tmp_path), automatic_checkpoint_naming=True, total_limit=2)
    accelerator = Accelerator(cpu=True, project_config=config, verbose=False)
    model = torch.nn.Linear(2, 1)
    model, optimizer = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    for _ in range(4):
        accelerator.backward(model(torch.ones(1, 2)).sum())
        optimizer.step()
        optimizer.zero_grad()
        accelerator.save_state()
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert kept == ["step-00000003", "step-00000004"]
    assert accelerator.project_configuration.iteration == 4


def test_settable_gradient_accumulation_steps() -> None:
    accelerator = Accelerator(cpu=True)
    accelerator.gradient_accumulation_steps = 4  # Accelerate's by_feature/gradient_accumulation.py sets it
    flags = []
    for _ in range(4):
        with accelerator.accumulate():
            flags.append(accelerator.sync_gradients)
    assert flags == [False, False, False, True]


def test_find_executable_batch_size_shrinks_until_it_fits() -> None:
    tried: list[int] = []

    @find_executable_batch_size(starting_batch_size=64)
    def inner_training_loop(batch_size: int) -> int:
        tried.append(batch_size)
        if batch_size > 40:
            raise RuntimeError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return batch_size

    assert inner_training_loop() == 40
    assert tried == [64, 57, 51, 45, 40]  # x0.9 after each out-of-memory error, as Accelerate


def test_profile_with_profile_kwargs(tmp_path: Path) -> None:
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(torch.nn.Linear(32, 32))
    with accelerator.profile(ProfileKwargs(activities=["cpu"], record_shapes=True,
                                           output_trace_dir=str(tmp_path))) as prof:
        model(torch.ones(8, 32)).sum().backward()
    assert "aten::addmm" in prof.key_averages().table(row_limit=50)
    trace = json.loads((tmp_path / "trace_rank0.json").read_text())
    assert trace["traceEvents"]


def test_utils_names_import_and_work() -> None:
    import ember.utils as utils

    for name in ("set_seed", "DistributedType", "ProjectConfiguration", "DeepSpeedPlugin",
                 "FullyShardedDataParallelPlugin", "DistributedDataParallelKwargs", "InitProcessGroupKwargs",
                 "GradScalerKwargs", "DataLoaderConfiguration", "ProfileKwargs", "DDPCommunicationHookType",
                 "find_executable_batch_size", "is_schedulefree_available", "send_to_device"):
        if name == "DeepSpeedPlugin" and not utils.is_deepspeed_available():
            continue
        assert getattr(utils, name) is not None, name
    assert isinstance(is_schedulefree_available(), bool)
    set_seed(3)
    a = torch.rand(2)
    set_seed(3)
    assert torch.equal(a, torch.rand(2))


@pytest.mark.timeout(240)
def test_two_process_idioms(tmp_path: Path, tools: Any) -> None:
    proc = tools.run([*tools.EMBER, "launch", "--cpu", "--num_processes", "2", WORKERS / "idioms_worker.py",
                      tmp_path])
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r, result in enumerate(ranks):
        assert result["multi_cpu"] and result["state"] == [2, r]
        assert result["trigger"] == [True, False]  # set on rank 1 only, seen by both, then cleared
        assert result["local_sgd_equal_after_step"] == [False, False, True, False, False, True]
    # FP16-compressed all-reduce: both ranks hold the mean of their gradients (2 x (r + 1) per weight)
    assert ranks[0]["hooked_grad"] == ranks[1]["hooked_grad"] == [[3.0, 3.0, 3.0, 3.0]]
    notice = "steps once per optimizer step on all 2 processes together"
    assert proc.stdout.count(notice) == 1, proc.stdout


def test_launch_dynamo_config_compiles_the_prepared_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`dynamo_config` in a launch YAML reaches the workers as EMBER_DYNAMO_CONFIG; the Accelerator compiles with it."""
    monkeypatch.setenv("EMBER_DYNAMO_CONFIG", json.dumps({"backend": "eager", "mode": "default", "fullgraph": False,
                                                          "dynamic": None, "regional": False}))
    accelerator = Accelerator(cpu=True, project_dir=tmp_path, verbose=False)
    model = torch.nn.Linear(3, 1)
    compiled, optimizer = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert type(compiled).__name__ == "OptimizedModule" and accelerator.unwrap_model(compiled) is model
    accelerator.backward(compiled(torch.ones(2, 3)).sum())
    optimizer.step()
    saved = accelerator.save_state()
    from safetensors.torch import load_file

    assert sorted(load_file(str(saved / "model.safetensors"))) == ["bias", "weight"]  # no "_orig_mod." prefix
