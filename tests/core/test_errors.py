"""Must-show 7: bad input fails early, in words: the argument, the valid values, a "did you mean", the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from ember import Accelerator, EmberConfigError, ProcessInfo
from ember.cli import main as ember_main
from ember.cli.config import LaunchConfig
from ember.cli.launch import check_resources


def _accelerator(**kwargs: Any) -> Accelerator:
    kwargs.setdefault("process", ProcessInfo())
    return Accelerator(verbose=False, **kwargs)


def test_unknown_precision_lists_valid_values_and_suggests() -> None:
    with pytest.raises(EmberConfigError) as err:
        _accelerator(cpu=True, mixed_precision="bf61")
    msg = str(err.value)
    assert msg.startswith("mixed_precision='bf61' is not a valid value.")
    assert 'Did you mean "bf16"?' in msg
    for valid in ("no", "fp16", "bf16", "32-true", "16-mixed", "bf16-mixed", "bf16-true", "16-true", "64-true"):
        assert f'"{valid}"' in msg


def test_unknown_strategy() -> None:
    with pytest.raises(EmberConfigError) as err:
        _accelerator(cpu=True, strategy="dpp")
    msg = str(err.value)
    assert "strategy='dpp' is not a valid value." in msg and 'Did you mean "ddp"?' in msg
    assert all(f'"{s}"' in msg for s in ("auto", "single", "ddp"))


def test_single_strategy_refuses_a_multi_process_job_before_any_process_group() -> None:
    with pytest.raises(EmberConfigError) as err:
        _accelerator(cpu=True, strategy="single", process=ProcessInfo(rank=0, world_size=2))
    assert "strategy='single' runs one process, but this job has WORLD_SIZE=2" in str(err.value)
    assert "strategy='ddp'" in str(err.value)
    assert not torch.distributed.is_initialized()


def test_cuda_asked_on_a_cpu_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(EmberConfigError) as err:
        _accelerator(accelerator="cuda")
    msg = str(err.value)
    assert "accelerator='cuda' asks for CUDA, but torch.cuda.is_available() is False" in msg
    assert "accelerator='cpu' (or cpu=True)" in msg
    with pytest.raises(EmberConfigError) as err:
        _accelerator(accelerator="tpu")
    assert str(err.value).endswith('Valid values: "auto", "cpu", "cuda", "gpu".')


def test_more_local_processes_than_gpus_fails_in_the_accelerator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    process = ProcessInfo(rank=1, world_size=2, local_rank=1, local_world_size=2)
    with pytest.raises(EmberConfigError, match=r"this node runs 2 processes but has 1 GPU\(s\): local rank 1"):
        _accelerator(process=process)
    assert not torch.distributed.is_initialized()


def test_launch_refuses_more_processes_than_gpus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A simulated 1-GPU machine: --num_processes 2 fails before torch.distributed.run starts anything."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(EmberConfigError) as err:
        check_resources(LaunchConfig(distributed_type="MULTI_GPU", num_processes=2))
    assert str(err.value) == (
        "--num_processes=2 over 1 machine(s) is 2 per machine, but this machine has 1 GPU(s). "
        "Use --num_processes 1 or fewer, or --cpu."
    )
    started: list[Any] = []
    monkeypatch.setattr("torch.distributed.run.run", lambda args: started.append(args))
    (tmp_path / "train.py").write_text("print('never run')\n")
    assert ember_main(["launch", "--num_processes", "2", str(tmp_path / "train.py")]) == 2
    assert "ember launch: error: --num_processes=2 over 1 machine(s)" in capsys.readouterr().err
    assert started == []
    check_resources(LaunchConfig(distributed_type="MULTI_GPU", num_processes=2, use_cpu=True))  # --cpu: fine


def test_multi_gpu_on_a_cpu_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(EmberConfigError, match=r"distributed_type=MULTI_GPU asks for CUDA.*Use distributed_type: MULTI_CPU"):
        check_resources(LaunchConfig(distributed_type="MULTI_GPU", num_processes=2))


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("distributed_type: MULTI_CPUU\n", ["distributed_type='MULTI_CPUU' is not a valid value.",
                                            'Did you mean "MULTI_CPU"?', '"FSDP"', '"DEEPSPEED"']),
        ("num_proceses: 2\n", ["unknown key 'num_proceses'.", 'Did you mean "num_processes"?', "Valid keys:"]),
        ("mixed_precision: bf61\n", ["mixed_precision='bf61' is not a valid value.", 'Did you mean "bf16"?']),
        ("fsdp_config:\n  fsdp_auto_wrap_polcy: TRANSFORMER_BASED_WRAP\n",
         ["fsdp_config: unknown key 'fsdp_auto_wrap_polcy'.", 'Did you mean "fsdp_auto_wrap_policy"?']),
        ("deepspeed_config:\n  zero_stage: 4\n", ["deepspeed_config.zero_stage=4 must be 0, 1, 2 or 3."]),
        ("distributed_type: 'NO'\nnum_processes: 2\n",
         ["distributed_type=NO runs one process, but num_processes=2.", "distributed_type: MULTI_CPU"]),
    ],
)
def test_bad_yaml_fails_with_did_you_mean(
    yaml_text: str, expected: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml_text)
    with pytest.raises(EmberConfigError) as err:
        LaunchConfig.from_file(cfg)
    assert str(err.value).startswith(str(cfg))  # names the file
    for text in expected:
        assert text in str(err.value)
    started: list[Any] = []
    monkeypatch.setattr("torch.distributed.run.run", lambda args: started.append(args))
    assert ember_main(["launch", "--config_file", str(cfg), "train.py"]) == 2
    assert expected[0] in capsys.readouterr().err and started == []


def test_unknown_distributed_type_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert ember_main(["launch", "--distributed_type", "fdsp", "train.py"]) == 2
    err = capsys.readouterr().err
    assert "distributed_type='FDSP' is not a valid value." in err and 'Did you mean "FSDP"?' in err


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(EmberConfigError, match=r"does not exist\. Write one with `ember config`"):
        LaunchConfig.from_file(tmp_path / "nope.yaml")


@pytest.mark.parametrize("precision", ["bf16-true", "bf16"])
def test_scheduler_without_its_optimizer_fails_before_the_model_is_touched(precision: str) -> None:
    acc = _accelerator(cpu=True, mixed_precision=precision)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1)
    with pytest.raises(EmberConfigError) as err:
        acc.prepare(model, sched)
    assert str(err.value) == (
        "prepare() got the scheduler StepLR but not its optimizer (SGD). Pass the optimizer to the same "
        "prepare() call (or an earlier one) so the scheduler steps only when that optimizer really steps."
    )
    assert acc.prepared.models == [] and acc.prepared.schedulers == []
    assert model.weight.dtype == torch.float32  # not converted to bf16 ("bf16-true")
    assert "forward" not in vars(model)  # not wrapped in autocast ("bf16")
    model, opt, sched = acc.prepare(model, opt, sched)  # together it works
    assert acc.prepared.models == [model] and len(acc.prepared.schedulers) == 1


def test_unknown_kwargs_handler_and_reduction() -> None:
    with pytest.raises(EmberConfigError, match="kwargs_handlers got dict; expected DistributedDataParallelKwargs"):
        _accelerator(cpu=True, kwargs_handlers=[{"find_unused_parameters": True}])
    with pytest.raises(EmberConfigError, match="accumulation_reduction='avg' is not a valid value"):
        _accelerator(cpu=True, accumulation_reduction="avg")


def test_save_state_refuses_an_existing_directory_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    pytest.importorskip("ember.checkpoint")
    acc = _accelerator(cpu=True, project_dir=tmp_path / "runs")
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model, opt = acc.prepare(model, opt)
    precious = tmp_path / "my_data"
    precious.mkdir()
    (precious / "notes.txt").write_text("do not delete")
    (precious / "sub").mkdir()
    (precious / "sub" / "x.bin").write_bytes(b"\x00\x01")
    with pytest.raises(EmberConfigError) as err:
        acc.save_state(precious)
    assert f"save_state(output_dir={str(precious)!r}): that path exists and is not an ember checkpoint" in str(err.value)
    assert sorted(p.relative_to(precious).as_posix() for p in precious.rglob("*")) == ["notes.txt", "sub", "sub/x.bin"]
    assert (precious / "notes.txt").read_text() == "do not delete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my_data"]  # no .tmp-my_data left behind
    # a new directory is fine, and a committed checkpoint can be overwritten by a newer one
    saved = acc.save_state(tmp_path / "ckpt")
    assert (saved / "manifest.json").is_file() and (saved / "model.safetensors").is_file()
    assert acc.save_state(tmp_path / "ckpt") == saved


def test_launch_of_a_missing_script_fails_before_starting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    started: list[Any] = []
    monkeypatch.setattr("torch.distributed.run.run", lambda args: started.append(args))
    assert ember_main(["launch", "--num_processes", "2", str(tmp_path / "trian.py")]) == 2
    assert f"ember launch: error: the script '{tmp_path / 'trian.py'}' does not exist" in capsys.readouterr().err
    assert started == []
