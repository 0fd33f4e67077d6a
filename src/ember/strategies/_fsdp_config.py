"""Accelerate's spellings of FSDP: the ``fsdp_config`` section of a launch YAML and
``FullyShardedDataParallelPlugin``, both mapped onto :class:`ember.strategies.fsdp.FSDPStrategy`.

>>> from ember.strategies.fsdp import FSDPStrategy
>>> s = FSDPStrategy()
>>> apply_accelerate_config(s, {"fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
...                             "fsdp_transformer_layer_cls_to_wrap": "LlamaDecoderLayer", "reshard_after_forward": False})
>>> s.auto_wrap_policy, s.reshard_after_forward
({'LlamaDecoderLayer'}, False)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ember._errors import EmberConfigError, did_you_mean, unknown_value
from ember._log import info

if TYPE_CHECKING:
    from ember.strategies.fsdp import FSDPStrategy

KEYS = ("version", "auto_wrap_policy", "transformer_layer_cls_to_wrap", "min_num_params", "reshard_after_forward",
        "sharding_strategy", "offload_params", "state_dict_type", "cpu_ram_efficient_loading",
        "activation_checkpointing")
#: FSDP1 options that FSDP2 makes unnecessary: accepted with a notice
FSDP1_ONLY = ("sync_module_states", "use_orig_params", "backward_prefetch", "forward_prefetch")
WRAP_POLICIES = ("TRANSFORMER_BASED_WRAP", "SIZE_BASED_WRAP", "NO_WRAP")


def _bool(key: str, value: Any, source: str) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "1", "yes"):
        return True
    if str(value).lower() in ("false", "0", "no"):
        return False
    raise EmberConfigError(f"{source}: fsdp_config.{key}={value!r} must be true or false.")


def apply_accelerate_config(strategy: FSDPStrategy, settings: Mapping[str, Any], source: str = "fsdp_config") -> None:
    """Set ``strategy`` from Accelerate's ``fsdp_config`` keys (the ``fsdp_`` prefix is optional)."""
    values = {str(k).removeprefix("fsdp_"): v for k, v in settings.items()}
    ignored = [k for k in values if k in FSDP1_ONLY]
    unknown = [k for k in values if k not in KEYS and k not in FSDP1_ONLY]
    if unknown:
        raise EmberConfigError(
            f"{source}: unknown fsdp_config key {'fsdp_' + unknown[0]!r}."
            f"{did_you_mean('fsdp_' + unknown[0], ['fsdp_' + k for k in KEYS])} Valid keys: "
            f"{', '.join('fsdp_' + k for k in KEYS)}.")
    if ignored:
        info(f"{source}: {', '.join('fsdp_' + k for k in ignored)} are FSDP1 options; FSDP2 needs none of them "
             "(ignored).")
    version = int(values.get("version", 2))
    if version not in (1, 2):
        raise EmberConfigError(f"{source}: fsdp_config.fsdp_version={version!r} must be 1 or 2.")
    if "sharding_strategy" in values:
        from ember.strategies.fsdp import _ACCELERATE_NUMBERS, SHARDING_STRATEGIES

        raw = values["sharding_strategy"]
        name = _ACCELERATE_NUMBERS.get(raw, str(raw).upper()) if isinstance(raw, int) else str(raw).upper()
        if name == "NO_SHARD":
            raise EmberConfigError(f"{source}: fsdp_sharding_strategy NO_SHARD replicates everything: use "
                                   "distributed_type: MULTI_GPU (DDP).")
        if name not in SHARDING_STRATEGIES:
            raise unknown_value(f"{source}: fsdp_config.fsdp_sharding_strategy", raw, list(SHARDING_STRATEGIES))
        strategy.sharding_strategy = name
        strategy.reshard_after_forward, strategy.hybrid = SHARDING_STRATEGIES[name]
    if "reshard_after_forward" in values:
        raw = values["reshard_after_forward"]
        if isinstance(raw, str) and raw.upper() in ("FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD"):
            strategy.reshard_after_forward = raw.upper() in ("FULL_SHARD", "HYBRID_SHARD")
        else:
            strategy.reshard_after_forward = _bool("fsdp_reshard_after_forward", raw, source)
    policy = str(values.get("auto_wrap_policy", "TRANSFORMER_BASED_WRAP")).upper()
    if policy not in WRAP_POLICIES:
        raise unknown_value(f"{source}: fsdp_config.fsdp_auto_wrap_policy", values["auto_wrap_policy"], WRAP_POLICIES)
    classes = values.get("transformer_layer_cls_to_wrap")
    if policy == "TRANSFORMER_BASED_WRAP" and classes:
        names = classes if isinstance(classes, (list, tuple)) else str(classes).split(",")
        strategy.auto_wrap_policy = {n.strip() for n in names if n.strip()}
    elif policy == "SIZE_BASED_WRAP":
        strategy.auto_wrap_policy = set()
        strategy.min_num_params = int(values.get("min_num_params", 100_000_000))
    elif policy == "NO_WRAP":
        strategy.auto_wrap_policy = set()
    if "offload_params" in values:
        strategy.cpu_offload = _bool("fsdp_offload_params", values["offload_params"], source)
    if "state_dict_type" in values:
        kind = str(values["state_dict_type"]).lower()
        if kind not in ("sharded_state_dict", "full_state_dict", "sharded", "full"):
            raise unknown_value(f"{source}: fsdp_config.fsdp_state_dict_type", values["state_dict_type"],
                                ["SHARDED_STATE_DICT", "FULL_STATE_DICT"])
        strategy.state_dict_type = "full" if kind.startswith("full") else "sharded"
    if "cpu_ram_efficient_loading" in values:
        strategy.cpu_ram_efficient_loading = _bool("fsdp_cpu_ram_efficient_loading",
                                                   values["cpu_ram_efficient_loading"], source)
    if _bool("fsdp_activation_checkpointing", values.get("activation_checkpointing", False), source):
        strategy.activation_checkpointing_policy = True


@dataclass
class FullyShardedDataParallelPlugin:
    """Accelerate's FSDP plugin, with its field names: ``Accelerator(fsdp_plugin=FullyShardedDataParallelPlugin(...))``.

    >>> plugin = FullyShardedDataParallelPlugin(transformer_cls_names_to_wrap=["GPT2Block"], reshard_after_forward=False)
    >>> strategy = plugin.to_strategy()
    >>> strategy.name, strategy.auto_wrap_policy, strategy.reshard_after_forward
    ('fsdp', {'GPT2Block'}, False)
    """

    fsdp_version: int = 2
    sharding_strategy: str | int | None = None
    reshard_after_forward: bool | str | None = None
    auto_wrap_policy: Any = None
    transformer_cls_names_to_wrap: list[str] | None = None
    min_num_params: int | None = None
    cpu_offload: bool = False
    state_dict_type: str = "SHARDED_STATE_DICT"
    cpu_ram_efficient_loading: bool = False
    activation_checkpointing: bool = False
    mixed_precision_policy: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_strategy(self) -> FSDPStrategy:
        from ember.strategies.fsdp import FSDPStrategy

        if self.mixed_precision_policy is not None:
            raise EmberConfigError("FullyShardedDataParallelPlugin(mixed_precision_policy=...): choose the precision "
                                   "with Accelerator(mixed_precision='bf16' | 'fp16'); FSDP2 then uses a matching "
                                   "MixedPrecisionPolicy (float32 parameters and reductions).")
        strategy = FSDPStrategy()
        settings: dict[str, Any] = {"version": self.fsdp_version, "offload_params": self.cpu_offload,
                                    "state_dict_type": self.state_dict_type,
                                    "cpu_ram_efficient_loading": self.cpu_ram_efficient_loading,
                                    "activation_checkpointing": self.activation_checkpointing, **self.extra}
        if self.sharding_strategy is not None:
            settings["sharding_strategy"] = self.sharding_strategy
        if self.reshard_after_forward is not None:
            settings["reshard_after_forward"] = self.reshard_after_forward
        if self.transformer_cls_names_to_wrap:
            settings["transformer_layer_cls_to_wrap"] = list(self.transformer_cls_names_to_wrap)
        if self.min_num_params:
            settings.update(auto_wrap_policy="SIZE_BASED_WRAP", min_num_params=self.min_num_params)
        elif isinstance(self.auto_wrap_policy, str):
            settings["auto_wrap_policy"] = self.auto_wrap_policy
        apply_accelerate_config(strategy, settings, "FullyShardedDataParallelPlugin")
        if self.auto_wrap_policy is not None and not isinstance(self.auto_wrap_policy, str):
            strategy.auto_wrap_policy = self.auto_wrap_policy  # classes or a predicate, as FSDPStrategy takes
        return strategy
