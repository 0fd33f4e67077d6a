"""Launch configuration: ember's YAML, which also reads Accelerate's ``accelerate_config.yaml`` keys.

>>> cfg = LaunchConfig.from_dict({"distributed_type": "MULTI_CPU", "num_processes": 2})
>>> cfg.num_processes
2
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ember._errors import EmberConfigError, did_you_mean, unknown_value

#: distributed_type → ember strategy name
DISTRIBUTED_TYPES: dict[str, str] = {
    "NO": "single",
    "MULTI_CPU": "ddp",
    "MULTI_GPU": "ddp",
    "DDP": "ddp",
    "FSDP": "fsdp",
    "DEEPSPEED": "deepspeed",
}
MIXED_PRECISION = ("no", "fp16", "bf16", "32-true", "16-mixed", "bf16-mixed", "bf16-true", "16-true", "64-true")

FSDP_KEYS = (
    "fsdp_version", "fsdp_auto_wrap_policy", "fsdp_transformer_layer_cls_to_wrap", "fsdp_min_num_params",
    "fsdp_sharding_strategy", "fsdp_reshard_after_forward", "fsdp_offload_params", "fsdp_state_dict_type",
    "fsdp_cpu_ram_efficient_loading", "fsdp_sync_module_states", "fsdp_use_orig_params", "fsdp_backward_prefetch",
    "fsdp_forward_prefetch", "fsdp_activation_checkpointing",
)
DEEPSPEED_KEYS = (
    "zero_stage", "gradient_accumulation_steps", "gradient_clipping", "offload_optimizer_device",
    "offload_param_device", "offload_optimizer_nvme_path", "offload_param_nvme_path", "zero3_init_flag",
    "zero3_save_16bit_model", "deepspeed_config_file", "deepspeed_multinode_launcher",
)
#: Accelerate keys that are read and accepted but have no effect on a launch
ACCEPTED_IGNORED = (
    "compute_environment", "debug", "downcast_bf16", "enable_cpu_affinity", "gpu_ids", "same_network",
    "main_training_function", "tpu_env", "tpu_use_cluster", "tpu_use_sudo", "dynamo_config", "rdzv_conf",
)


@dataclass
class LaunchConfig:
    """Everything ``ember launch`` needs to start a job (flags override the file)."""

    distributed_type: str = "MULTI_CPU"
    num_processes: int = 1
    num_machines: int = 1
    machine_rank: int = 0
    main_process_ip: str | None = None
    main_process_port: int | None = None
    mixed_precision: str = "no"
    use_cpu: bool = False
    gradient_accumulation_steps: int | None = None
    max_restarts: int = 0
    rdzv_backend: str = "static"
    monitor_interval: float = 1.0
    fsdp_config: dict[str, Any] = field(default_factory=dict)
    deepspeed_config: dict[str, Any] = field(default_factory=dict)

    @property
    def strategy(self) -> str:
        return DISTRIBUTED_TYPES[self.distributed_type]

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> LaunchConfig:
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in raw.items():
            if key in known:
                values[key] = value
            elif key not in ACCEPTED_IGNORED:
                raise EmberConfigError(
                    f"{source}: unknown key {key!r}.{did_you_mean(key, [*known, *ACCEPTED_IGNORED])} "
                    f"Valid keys: {', '.join(sorted(known))}."
                )
        for section in ("fsdp_config", "deepspeed_config"):
            if section in values and values[section] is None:  # an empty section in YAML reads as null
                values[section] = {}
        cfg = cls(**values)
        cfg.validate(source)
        return cfg

    @classmethod
    def from_file(cls, path: str | Path) -> LaunchConfig:
        p = Path(path)
        if not p.is_file():
            raise EmberConfigError(f"--config_file {str(p)!r} does not exist. Write one with `ember config`.")
        raw = yaml.safe_load(p.read_text()) or {}
        if not isinstance(raw, dict):
            raise EmberConfigError(f"--config_file {str(p)!r} must hold a YAML mapping of keys to values.")
        return cls.from_dict(raw, source=str(p))

    def validate(self, source: str = "config") -> None:
        self.distributed_type = _yaml_no(self.distributed_type, "NO").upper()
        if self.distributed_type not in DISTRIBUTED_TYPES:
            raise unknown_value(f"{source}: distributed_type", self.distributed_type, list(DISTRIBUTED_TYPES))
        self.mixed_precision = _yaml_no(self.mixed_precision, "no").lower()
        if self.mixed_precision not in MIXED_PRECISION:
            raise unknown_value(f"{source}: mixed_precision", self.mixed_precision, MIXED_PRECISION)
        for name in ("num_processes", "num_machines"):
            if int(getattr(self, name)) < 1:
                raise EmberConfigError(f"{source}: {name}={getattr(self, name)} must be >= 1.")
        if self.distributed_type == "NO" and self.num_processes > 1:
            raise EmberConfigError(
                f"{source}: distributed_type=NO runs one process, but num_processes={self.num_processes}. Use "
                "distributed_type: MULTI_CPU or MULTI_GPU to train on several processes, or num_processes: 1."
            )
        if self.num_processes % self.num_machines:
            raise EmberConfigError(
                f"{source}: num_processes={self.num_processes} (processes in all) must be a multiple of "
                f"num_machines={self.num_machines}."
            )
        if not 0 <= self.machine_rank < self.num_machines:
            raise EmberConfigError(
                f"{source}: machine_rank={self.machine_rank} must be in [0, num_machines={self.num_machines})."
            )
        if self.num_machines > 1 and not self.main_process_ip:
            raise EmberConfigError(f"{source}: num_machines > 1 needs main_process_ip (the address of machine 0).")
        if self.rdzv_backend not in ("static", "c10d"):
            raise unknown_value(f"{source}: rdzv_backend", self.rdzv_backend, ["static", "c10d"])
        _check_keys(self.fsdp_config, FSDP_KEYS, f"{source}: fsdp_config")
        _check_keys(self.deepspeed_config, DEEPSPEED_KEYS, f"{source}: deepspeed_config")
        stage = self.deepspeed_config.get("zero_stage")
        if stage is not None and stage not in (0, 1, 2, 3):
            raise EmberConfigError(f"{source}: deepspeed_config.zero_stage={stage!r} must be 0, 1, 2 or 3.")

    def strategy_config(self) -> dict[str, Any]:
        """The YAML section that configures the chosen strategy (handed to the workers' Strategy.configure)."""
        return {"FSDP": self.fsdp_config, "DEEPSPEED": self.deepspeed_config}.get(self.distributed_type, {})

    def to_yaml(self) -> str:
        data = {k: v for k, v in asdict(self).items() if v not in (None, {}, [])}
        return yaml.safe_dump(data, sort_keys=False)


def _yaml_no(value: object, spelled: str) -> str:
    """YAML 1.1 reads an unquoted ``NO`` / ``no`` as the boolean False; hand-written configs use it unquoted."""
    return spelled if value is False else str(value)


def _check_keys(section: Any, valid: tuple[str, ...], where: str) -> None:
    if not isinstance(section, dict):
        raise EmberConfigError(f"{where} must be a mapping, got {type(section).__name__}.")
    for key in section:
        if key not in valid:
            raise EmberConfigError(
                f"{where}: unknown key {key!r}.{did_you_mean(key, valid)} Valid keys: {', '.join(valid)}."
            )
