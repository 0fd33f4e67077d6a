"""DeepSpeed spellings and configuration, in one process without building an engine: Lightning's and Accelerate's
names, the launch YAML section, "auto" values filled from ember's settings, contradictions that fail before training
naming both sides, and "did you mean" for unknown keys."""

from __future__ import annotations

import datetime
import doctest
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import torch

pytestmark = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                reason="DeepSpeed is not installed (pip install --no-build-isolation 'ember[deepspeed]')")

from ember import Accelerator, DeepSpeedPlugin, DeepSpeedStrategy, EmberConfigError, ProcessInfo  # noqa: E402
from ember._env import LaunchSettings  # noqa: E402
from ember._options import resolve  # noqa: E402
from ember.cli.config import LaunchConfig  # noqa: E402
from ember.precision import resolve_precision  # noqa: E402
from ember.strategies import resolve_strategy, strategy_names  # noqa: E402
from ember.trainer._config import check_strategy  # noqa: E402


def bound(strategy: DeepSpeedStrategy, world: int = 2) -> DeepSpeedStrategy:
    strategy.bind(ProcessInfo(rank=0, world_size=world), torch.device("cpu"), datetime.timedelta(seconds=60))
    return strategy


def options(**kwargs: Any) -> Any:
    """The Accelerator's argument resolution (everything before a process group starts)."""
    defaults: dict[str, Any] = {
        "mixed_precision": None, "gradient_accumulation_steps": None, "cpu": True, "strategy": "auto",
        "kwargs_handlers": None, "timeout": None, "accelerator": "auto", "accumulation_reduction": "mean",
        "handle_signals": False, "nonfinite": "off", "plugins": (), "launch": LaunchSettings(),
    }
    return resolve(ProcessInfo(), **{**defaults, **kwargs})


@pytest.mark.parametrize(("name", "stage", "offload"), [
    ("deepspeed", 2, set()), ("deepspeed_stage_1", 1, set()), ("deepspeed_stage_2", 2, set()),
    ("deepspeed_stage_2_offload", 2, {"offload_optimizer"}), ("deepspeed_stage_3", 3, set()),
    ("deepspeed_stage_3_offload", 3, {"offload_optimizer", "offload_param"}),
])
def test_lightning_spellings(name: str, stage: int, offload: set[str]) -> None:
    assert name in strategy_names() and check_strategy(name) == name  # every name list reads the registry
    strategy = resolve_strategy(name, world_size=2)
    assert isinstance(strategy, DeepSpeedStrategy) and strategy.stage == stage
    zero = strategy.config.get("zero_optimization", {})
    assert {k for k in zero if k.startswith("offload")} == offload
    assert all(zero[k] == {"device": "cpu"} for k in offload)
    assert strategy.distributed_type() == "DEEPSPEED"


def test_a_misspelled_strategy_gets_a_suggestion() -> None:
    with pytest.raises(EmberConfigError, match='Did you mean "deepspeed_stage_2"'):
        check_strategy("deepspeed_stage2")


def test_lightning_strategy_object_merges_its_arguments_with_the_config(tmp_path: Path) -> None:
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 3, "overlap_comm": True}, "gradient_clipping": "auto"}))
    strategy = DeepSpeedStrategy(config=str(path), offload_parameters=True, zero3_save_16bit_model=True)
    assert strategy.stage == 3
    assert strategy.config["zero_optimization"] == {
        "stage": 3, "overlap_comm": True, "offload_param": {"device": "cpu"},
        "stage3_gather_16bit_weights_on_model_save": True}
    with pytest.raises(EmberConfigError, match=r"stage=\.\.\.\) is 2, but the DeepSpeed config sets "
                                               r"zero_optimization.stage=3"):
        DeepSpeedStrategy(stage=2, config=str(path))
    with pytest.raises(EmberConfigError, match="'optimizer' section"):
        DeepSpeedStrategy(config={"optimizer": {"type": "AdamW"}})
    with pytest.raises(EmberConfigError, match="does not exist"):
        DeepSpeedStrategy(config=str(tmp_path / "missing.json"))
    with pytest.raises(EmberConfigError, match="stage 0 is plain data parallelism"):
        DeepSpeedStrategy(stage=0)


def test_accelerate_plugin_fields_and_the_seed_snippet() -> None:
    plugin = DeepSpeedPlugin(zero_stage=2, gradient_accumulation_steps=4)  # the seed's snippet
    assert plugin.deepspeed_config == {"zero_optimization": {"stage": 2}, "gradient_accumulation_steps": 4}
    opts = options(plugins=(None, plugin))
    assert isinstance(opts.strategy, DeepSpeedStrategy) and opts.accumulation_steps == 4  # the plugin's accumulation
    full = DeepSpeedPlugin(zero_stage=3, gradient_clipping=1.0, offload_optimizer_device="cpu",
                           offload_param_device="cpu", zero3_init_flag=True, zero3_save_16bit_model=True,
                           hf_ds_config={"train_micro_batch_size_per_gpu": "auto", "zero_optimization": {"stage": 3}})
    strategy = full.to_strategy()
    assert strategy.zero3_init_flag and strategy.config["gradient_clipping"] == 1.0
    assert strategy.config["zero_optimization"]["offload_optimizer"] == {"device": "cpu"}
    with pytest.raises(EmberConfigError, match=r"DeepSpeedPlugin\(zero_stage=...\) is 1, but the DeepSpeed config sets zero_optimization.stage=3"):
        DeepSpeedPlugin(zero_stage=1, hf_ds_config={"zero_optimization": {"stage": 3}})
    with pytest.raises(EmberConfigError, match=r"offload_optimizer_device.*Did you mean \"cpu\""):
        DeepSpeedPlugin(offload_optimizer_device="cpus")


def test_accumulation_contradiction_fails_before_anything_starts() -> None:
    plugin = DeepSpeedPlugin(zero_stage=2, gradient_accumulation_steps=4)
    with pytest.raises(EmberConfigError, match=r"gradient_accumulation_steps=2 .*gradient_accumulation_steps=4"):
        Accelerator(cpu=True, deepspeed_plugin=plugin, gradient_accumulation_steps=2, process=ProcessInfo())
    assert options(plugins=(None, plugin), gradient_accumulation_steps=4).accumulation_steps == 4


def test_launch_yaml_section_configures_the_strategy(tmp_path: Path) -> None:
    file = tmp_path / "ds.json"
    file.write_text(json.dumps({"zero_optimization": {"stage": "auto", "contiguous_gradients": True},
                                "train_micro_batch_size_per_gpu": "auto"}))
    section = {"deepspeed_config_file": str(file), "zero_stage": 3, "offload_optimizer_device": "cpu",
               "gradient_accumulation_steps": 2, "gradient_clipping": 0.5, "zero3_init_flag": True,
               "zero3_save_16bit_model": True}
    cfg = LaunchConfig.from_dict({"distributed_type": "DEEPSPEED", "num_processes": 2, "deepspeed_config": section})
    opts = options(launch=LaunchSettings(strategy=cfg.strategy, strategy_config=cfg.strategy_config()))
    strategy = opts.strategy
    assert isinstance(strategy, DeepSpeedStrategy) and strategy.stage == 3 and strategy.zero3_init_flag
    assert opts.accumulation_steps == 2 and strategy.config["gradient_clipping"] == 0.5
    assert strategy.config["zero_optimization"]["contiguous_gradients"] is True
    assert strategy.config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    with pytest.raises(EmberConfigError, match=r"unknown key 'zero_stag'\. Did you mean \"zero_stage\""):
        DeepSpeedStrategy().configure({"zero_stag": 2}, "ds.yaml")
    with pytest.raises(EmberConfigError, match=r"zero_optimization\.stage=2"):
        resolve_strategy("deepspeed_stage_2", 2).configure({"zero_stage": 3})


def test_auto_values_are_filled_from_embers_settings() -> None:
    strategy = bound(DeepSpeedStrategy(config={
        "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto", "train_batch_size": "auto",
        "gradient_clipping": "auto", "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"},
        "zero_optimization": {"stage": 2, "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto"}}))
    assert strategy.resolve_accumulation(3, "gradient_accumulation_steps") == 3
    strategy.set_micro_batch_size(4)
    precision = strategy.negotiate_precision(resolve_precision("bf16-mixed", "cpu"))
    assert precision.name == "bf16-mixed" and precision.param_dtype == torch.bfloat16 and not precision.uses_autocast
    module = torch.nn.Linear(8, 8)
    module.config = type("Config", (), {"hidden_size": 8})()  # a transformers-like model
    config = strategy._engine_config(module)
    assert config["train_micro_batch_size_per_gpu"] == 4 and config["gradient_accumulation_steps"] == 3
    assert config["train_batch_size"] == 4 * 3 * 2  # micro x accumulation x data-parallel size
    assert config["gradient_clipping"] == 0.0  # ember clips per step with clip_grad_norm_'s max_norm
    assert config["bf16"] == {"enabled": True} and config["fp16"] == {"enabled": False}
    assert config["zero_optimization"]["reduce_bucket_size"] == 64  # hidden_size**2, as Accelerate fills it
    assert config["zero_optimization"]["stage3_prefetch_bucket_size"] == int(0.9 * 64)
    assert config["zero_allow_untested_optimizer"] is True  # the user's own torch optimizer


@pytest.mark.parametrize(("config", "call", "match"), [
    ({"train_micro_batch_size_per_gpu": 8}, lambda s: s.set_micro_batch_size(4),
     r"batch_size=4 per process, but the DeepSpeed config sets train_micro_batch_size_per_gpu=8"),
    ({"train_batch_size": 10}, lambda s: s.set_micro_batch_size(4),
     r"train_batch_size=10, but ember trains with 4 .* x 1 .* x 2 .* = 8"),
    ({"bf16": {"enabled": True}}, lambda s: s.negotiate_precision(resolve_precision("no", "cpu")),
     r"bf16.enabled=true, but ember's precision is '32-true'"),
    ({"fp16": {"enabled": False}}, lambda s: s.negotiate_precision(resolve_precision("fp16", "cpu")),
     r"fp16.enabled=false, but ember's precision is '16-mixed'"),
    ({}, lambda s: s.negotiate_precision(resolve_precision("64-true", "cpu")), "precision '64-true' is not"),
    ({"zero_optimization": {"elastic_checkpoint": True}}, lambda s: s._engine_config(None), "elastic_checkpoint"),
    ({"zero_optimization": {"reduce_bucket_size": "auto", "sub_group_size": "auto"}},
     lambda s: s._engine_config(None), r"cannot fill .*zero_optimization.sub_group_size"),
    ({"gradient_clipping": 0.5}, lambda s: s._check_clip(1.0),
     r"max_norm=1.0\) \(Trainer: gradient_clip_val\), but the DeepSpeed config sets gradient_clipping=0.5"),
])
def test_contradictions_name_both_sides(config: dict[str, Any], call: Any, match: str) -> None:
    with pytest.raises(EmberConfigError, match=match):
        call(bound(DeepSpeedStrategy(config=config)))


def test_unknown_zero_keys_get_a_suggestion() -> None:
    from ember.strategies._deepspeed_config import check_zero_keys

    with pytest.raises(EmberConfigError, match='Did you mean "overlap_comm"'):
        check_zero_keys({"stage": 2, "overlap_com": True}, ["stage", "overlap_comm", "contiguous_gradients"])


def test_docstring_examples_run() -> None:
    import ember.strategies._deepspeed_config as config_module
    import ember.strategies.deepspeed as strategy_module

    for module in (strategy_module, config_module):
        failed, attempted = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert attempted >= 2 and failed == 0
