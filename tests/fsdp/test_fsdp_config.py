"""The seed's FSDP YAML on 2 processes through ``ember launch --config_file``, and Accelerate's spellings of FSDP
(YAML keys with or without the ``fsdp_`` prefix, FullyShardedDataParallelPlugin) mapped onto FSDP2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ember import Accelerator, EmberConfigError, FullyShardedDataParallelPlugin, ProcessInfo
from ember.strategies import FSDPStrategy

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_seed_fsdp_yaml_trains_a_llama_on_two_processes(tmp_path: Path) -> None:
    pytest.importorskip("transformers", reason="the seed's FSDP YAML wraps transformers' LlamaDecoderLayer")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EMBER_", "RANK", "WORLD_SIZE", "MASTER_"))}
    env["OMP_NUM_THREADS"] = "1"
    env["CUDA_VISIBLE_DEVICES"] = ""  # these tests mean the CPU (gloo), also on a GPU machine
    cmd = [sys.executable, "-m", "ember.cli", "launch", "--config_file", str(ROOT / "examples/seed_fsdp_config.yaml"),
           "--cpu", str(ROOT / "examples/seed_fsdp_llama.py")]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "distributed_type=FSDP mixed_precision=bf16 sharded_blocks=2 steps=8" in proc.stdout
    assert "parameter dtypes: ['torch.float32']" in proc.stdout  # bf16 compute, float32 parameters
    manifest = json.loads((tmp_path / "checkpoint" / "manifest.json").read_text())
    assert (manifest["strategy"], manifest["world_size"], manifest["precision"]) == ("fsdp", 2, "bf16-mixed")
    assert sorted(p.name for p in (tmp_path / "checkpoint" / "model").iterdir()) == [
        "shard-r00000.json", "shard-r00000.safetensors", "shard-r00001.json", "shard-r00001.safetensors"]


def test_accelerate_fsdp_keys_with_and_without_prefix() -> None:
    s = FSDPStrategy()
    s.configure({"fsdp_sharding_strategy": "SHARD_GRAD_OP", "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                 "transformer_layer_cls_to_wrap": "LlamaDecoderLayer, MistralDecoderLayer",
                 "fsdp_offload_params": "true", "fsdp_state_dict_type": "FULL_STATE_DICT",
                 "fsdp_cpu_ram_efficient_loading": True, "fsdp_activation_checkpointing": True})
    assert (s.reshard_after_forward, s.auto_wrap_policy, s.cpu_offload, s.state_dict_type) == (
        False, {"LlamaDecoderLayer", "MistralDecoderLayer"}, True, "full")
    assert s.cpu_ram_efficient_loading and s.activation_checkpointing_policy is True
    s.configure({"fsdp_sharding_strategy": 4})  # Accelerate's number for HYBRID_SHARD
    assert s.hybrid and s.sharding_strategy == "HYBRID_SHARD"


def test_unknown_fsdp_key_is_an_error_with_a_suggestion() -> None:
    with pytest.raises(EmberConfigError, match=r"unknown fsdp_config key 'fsdp_transformer_layer_cls_to_warp'\. "
                                              r"Did you mean \"fsdp_transformer_layer_cls_to_wrap\"\?"):
        FSDPStrategy().configure({"fsdp_transformer_layer_cls_to_warp": "LlamaDecoderLayer"})
    with pytest.raises(EmberConfigError, match="NO_SHARD replicates everything"):
        FSDPStrategy().configure({"fsdp_sharding_strategy": "NO_SHARD"})


def test_wrap_policy_naming_a_missing_class_fails_at_prepare() -> None:
    import torch

    acc = Accelerator(cpu=True, strategy=FSDPStrategy(auto_wrap_policy={"LlamaDecoderLayr"}),
                      process=ProcessInfo(), verbose=False)
    with pytest.raises(EmberConfigError, match="no module of that class"):
        acc.prepare(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_plugin_chooses_fsdp_and_conflicts_are_named() -> None:
    acc = Accelerator(cpu=True, process=ProcessInfo(), verbose=False,
                      fsdp_plugin=FullyShardedDataParallelPlugin(reshard_after_forward=False))
    assert acc.strategy.name == "fsdp" and acc.distributed_type == "FSDP"
    assert acc.strategy.reshard_after_forward is False  # type: ignore[attr-defined]
    with pytest.raises(EmberConfigError, match="both choose the strategy"):
        Accelerator(cpu=True, process=ProcessInfo(), strategy="ddp", fsdp_plugin=FullyShardedDataParallelPlugin())
