"""The DeepSpeed configuration: the user's JSON (file or dict), Lightning's and Accelerate's arguments and ember's
own settings, merged into the one dict DeepSpeed reads. Pure Python: DeepSpeed is not imported here.

Rules:

* An explicit argument fills a key the config leaves out or sets to ``"auto"``; an explicit value that differs from
  the config's is a contradiction, reported with both values before anything is built.
* ``"auto"`` values are filled from ember's settings: ``gradient_accumulation_steps`` (the Accelerator's /
  ``accumulate_grad_batches``), ``train_micro_batch_size_per_gpu`` (the prepared training loader's batch size),
  ``train_batch_size`` (micro × accumulation × data-parallel size), ``bf16``/``fp16`` (the precision) and
  ``gradient_clipping`` (ember clips per step with the ``max_norm`` given to ``clip_grad_norm_``).

>>> config = ConfigDraft({"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": "auto"})
>>> config.put("gradient_accumulation_steps", 4, "DeepSpeedPlugin(gradient_accumulation_steps=...)")
>>> config.own_int("gradient_accumulation_steps"), config.get("zero_optimization.stage")
(4, 2)
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ember._errors import EmberConfigError, did_you_mean

AUTO = "auto"
#: the ``deepspeed_config`` keys of an Accelerate / ember launch YAML
YAML_KEYS = (
    "deepspeed_config_file", "zero_stage", "offload_optimizer_device", "offload_param_device",
    "offload_optimizer_nvme_path", "offload_param_nvme_path", "gradient_accumulation_steps", "gradient_clipping",
    "zero3_init_flag", "zero3_save_16bit_model", "deepspeed_multinode_launcher", "deepspeed_hostfile",
)
#: ember precision name → DeepSpeed's section (None: float32)
PRECISION_SECTIONS: dict[str, str | None] = {
    "32-true": None, "bf16-mixed": "bf16", "bf16-true": "bf16", "16-mixed": "fp16", "16-true": "fp16",
}
OFFLOAD_DEVICES = ("none", "cpu", "nvme")


def load_user_config(config: Any) -> dict[str, Any]:
    """A DeepSpeed config given as a dict, a path to a JSON file, or an object with a ``config`` dict
    (Accelerate's ``HfDeepSpeedConfig``); a copy, so the caller's dict is never changed."""
    if config is None:
        return {}
    if isinstance(config, dict):
        return copy.deepcopy(config)
    if isinstance(config, (str, os.PathLike)):
        path = Path(config)
        if not path.is_file():
            raise EmberConfigError(f"DeepSpeed config file {str(path)!r} does not exist. Pass the path of a JSON "
                                   "file, or the config as a dict.")
        try:
            loaded = json.loads(path.read_text())
        except ValueError as exc:
            raise EmberConfigError(f"DeepSpeed config file {str(path)!r} is not valid JSON: {exc}.") from exc
        if not isinstance(loaded, dict):
            raise EmberConfigError(f"DeepSpeed config file {str(path)!r} must hold a JSON object.")
        return loaded
    inner = getattr(config, "config", None)
    if isinstance(inner, dict):
        return copy.deepcopy(inner)
    raise EmberConfigError(f"the DeepSpeed config must be a dict or a path to a JSON file, got {type(config).__name__}.")


class ConfigDraft:
    """A DeepSpeed config being assembled: dotted-key access and contradiction checks."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        self.config: dict[str, Any] = config if config is not None else {}
        self.applied: list[tuple[str, Any, str]] = []  # explicit settings, to re-apply on another base config
        for section in ("optimizer", "scheduler"):
            if section in self.config:
                raise EmberConfigError(
                    f"the DeepSpeed config has an {section!r} section, but ember steps the optimizer (and the "
                    "scheduler) that you prepare yourself. Remove the section and create them in your code, e.g. "
                    "torch.optim.AdamW(model.parameters(), lr=...)."
                )

    def get(self, dotted: str) -> Any:
        node: Any = self.config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node

    def set(self, dotted: str, value: Any) -> None:
        parts = dotted.split(".")
        node = self.config
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = value

    def is_open(self, dotted: str) -> bool:
        """True when the config leaves ``dotted`` to ember (absent or ``"auto"``)."""
        return self.get(dotted) in (None, AUTO)

    def put(self, dotted: str, value: Any, source: str) -> None:
        """Apply an explicit setting named ``source``; a different explicit value in the config is an error."""
        if value is None:
            return
        self.applied.append((dotted, value, source))
        current = self.get(dotted)
        if current in (None, AUTO):
            self.set(dotted, value)
        elif current != value:
            raise EmberConfigError(
                f"{source} is {value!r}, but the DeepSpeed config sets {dotted}={current!r}. Make them agree, or "
                f'set {dotted} to "auto" in the config so ember fills it in.'
            )

    def rebased(self, config: dict[str, Any]) -> ConfigDraft:
        """``config`` with this draft's explicit settings applied on top (contradictions fail)."""
        draft = ConfigDraft(config)
        for dotted, value, source in self.applied:
            draft.put(dotted, value, source)
        return draft

    def own_int(self, dotted: str) -> int | None:
        """The config's own integer for ``dotted`` (None when absent or ``"auto"``)."""
        value = self.get(dotted)
        if value in (None, AUTO):
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < 0:
            raise EmberConfigError(f"the DeepSpeed config's {dotted}={value!r} must be a whole number or \"auto\".")
        return int(value)

    def own_float(self, dotted: str) -> float | None:
        value = self.get(dotted)
        if value in (None, AUTO):
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise EmberConfigError(f"the DeepSpeed config's {dotted}={value!r} must be a number >= 0 or \"auto\".")
        return float(value)


def apply_offload(draft: ConfigDraft, kind: str, device: str | None, nvme_path: str | None, source: str) -> None:
    """``offload_optimizer`` / ``offload_param`` from an argument (``"none"`` means no offload)."""
    if device is None:
        return
    if device not in OFFLOAD_DEVICES:
        raise EmberConfigError(f"{source}={device!r} is not a valid value.{did_you_mean(device, OFFLOAD_DEVICES)} "
                               f"Valid values: {', '.join(OFFLOAD_DEVICES)}.")
    if device == "none":
        return
    draft.put(f"zero_optimization.offload_{kind}.device", device, source)
    if device == "nvme":
        if not nvme_path or nvme_path == "none":
            raise EmberConfigError(f"{source}='nvme' needs the NVMe directory: set offload_{kind}_nvme_path.")
        draft.put(f"zero_optimization.offload_{kind}.nvme_path", nvme_path, f"offload_{kind}_nvme_path")


def check_yaml_keys(settings: dict[str, Any], source: str) -> None:
    for key in settings:
        if key not in YAML_KEYS:
            raise EmberConfigError(f"{source}: deepspeed_config has the unknown key {key!r}.{did_you_mean(key, YAML_KEYS)} "
                                   f"Valid keys: {', '.join(YAML_KEYS)}.")


def precision_section(draft: ConfigDraft, precision_name: str) -> None:
    """Fill (or check) DeepSpeed's ``bf16``/``fp16`` sections from ember's precision."""
    if precision_name not in PRECISION_SECTIONS:
        raise EmberConfigError(
            f"DeepSpeed trains in float32, bfloat16 or float16; precision {precision_name!r} is not one of them. "
            f"Use one of {', '.join(PRECISION_SECTIONS)} (or strategy='ddp' for {precision_name!r})."
        )
    wanted = PRECISION_SECTIONS[precision_name]
    for section in ("bf16", "fp16"):
        enabled = draft.get(f"{section}.enabled")
        if enabled in (None, AUTO):
            draft.set(f"{section}.enabled", section == wanted)
        elif bool(enabled) != (section == wanted):
            hint = {"bf16": "'bf16' (precision='bf16-mixed')", "fp16": "'fp16' (precision='16-mixed')"}[section]
            raise EmberConfigError(
                f"the DeepSpeed config sets {section}.enabled={str(bool(enabled)).lower()}, but ember's precision is "
                f"{precision_name!r}. Pass mixed_precision={hint if enabled else repr('no')} to match, or set "
                f'{section}.enabled to "auto" so ember fills it in.'
            )


def check_zero_keys(zero: dict[str, Any], valid: list[str]) -> None:
    """Unknown ``zero_optimization`` keys fail with a suggestion (DeepSpeed's own error lists every field)."""
    for key in zero:
        if key not in valid:
            raise EmberConfigError(f"the DeepSpeed config's zero_optimization has the unknown key {key!r}."
                                   f"{did_you_mean(key, valid)} See DeepSpeed's ZeRO configuration for the valid keys.")


#: zero_optimization values Accelerate derives from the model's hidden size when they are "auto"
HIDDEN_SIZE_KEYS: dict[str, Callable[[int], int]] = {
    "reduce_bucket_size": lambda h: h * h,
    "stage3_prefetch_bucket_size": lambda h: int(0.9 * h * h),
    "stage3_param_persistence_threshold": lambda h: 10 * h,
}


def fill_model_autos(draft: ConfigDraft, module: Any) -> None:
    """``"auto"`` bucket sizes from ``model.config.hidden_size`` when the model has one (else DeepSpeed's default);
    absent communication buckets no larger than the model (DeepSpeed allocates 5e8 elements: for a small model
    that is only memory, the model fits one bucket either way)."""
    hidden = getattr(getattr(module, "config", None), "hidden_size", None)
    zero = draft.get("zero_optimization")
    for key, rule in HIDDEN_SIZE_KEYS.items():
        if isinstance(zero, dict) and zero.get(key) == AUTO:
            if isinstance(hidden, int) and hidden > 0:
                zero[key] = rule(hidden)
            else:
                del zero[key]
    if module is None:
        return
    size = sum(getattr(p, "ds_numel", p.numel()) for p in module.parameters() if p.requires_grad)
    for key in ("reduce_bucket_size", "allgather_bucket_size"):
        if draft.get(f"zero_optimization.{key}") is None:
            draft.set(f"zero_optimization.{key}", int(min(5e8, max(64, -(-size // 64) * 64))))  # 64-aligned


def remaining_autos(node: Any, prefix: str = "") -> list[str]:
    """Dotted keys still set to ``"auto"`` (ember could not fill them)."""
    if not isinstance(node, dict):
        return []
    found = []
    for key, value in node.items():
        where = f"{prefix}{key}"
        if value == AUTO:
            found.append(where)
        found.extend(remaining_autos(value, where + "."))
    return found
