"""String enums whose members compare equal to Accelerate's (``accelerate.utils.DistributedType`` and
``PrecisionType``), so ported code that branches on them takes the same branch.

>>> DistributedType.MULTI_GPU == "MULTI_GPU", PrecisionType.BF16 == "bf16"
(True, True)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ember.accelerator import Accelerator


class DistributedType(str, enum.Enum):
    """How the job is distributed, in Accelerate's words (``accelerator.distributed_type``).

    ember returns ``NO``, ``MULTI_CPU``, ``MULTI_GPU``, ``FSDP`` or ``DEEPSPEED``; Accelerate's other members are
    here so that ported comparisons such as ``accelerator.distributed_type == DistributedType.XLA`` run (and are
    False).
    """

    NO = "NO"
    MULTI_CPU = "MULTI_CPU"
    MULTI_GPU = "MULTI_GPU"
    FSDP = "FSDP"
    DEEPSPEED = "DEEPSPEED"
    # never returned by ember (no such backend here)
    MULTI_NPU = "MULTI_NPU"
    MULTI_MLU = "MULTI_MLU"
    MULTI_SDAA = "MULTI_SDAA"
    MULTI_MUSA = "MULTI_MUSA"
    MULTI_XPU = "MULTI_XPU"
    MULTI_HPU = "MULTI_HPU"
    MULTI_NEURON = "MULTI_NEURON"
    XLA = "XLA"
    MEGATRON_LM = "MEGATRON_LM"

    def __str__(self) -> str:
        return self.value


class PrecisionType(str, enum.Enum):
    """Accelerate's mixed-precision names (``accelerator.mixed_precision`` returns one of these strings)."""

    NO = "no"
    FP8 = "fp8"
    FP16 = "fp16"
    BF16 = "bf16"

    def __str__(self) -> str:
        return self.value


#: ember's precision names → Accelerate's ("what dtype does the compute use")
ACCELERATE_PRECISION = {
    "32-true": "no", "64-true": "no", "16-mixed": "fp16", "bf16-mixed": "bf16", "16-true": "fp16", "bf16-true": "bf16",
}


@dataclass(frozen=True)
class AcceleratorState:
    """Accelerate's ``AcceleratorState`` fields, read from one Accelerator (``accelerator.state``)."""

    distributed_type: DistributedType
    num_processes: int
    process_index: int
    local_process_index: int
    device: torch.device
    mixed_precision: str
    use_distributed: bool
    is_main_process: bool
    is_local_main_process: bool
    is_last_process: bool

    @classmethod
    def of(cls, acc: Accelerator) -> AcceleratorState:
        return cls(acc.distributed_type, acc.num_processes, acc.process_index, acc.local_process_index, acc.device,
                   acc.mixed_precision, acc.use_distributed, acc.is_main_process, acc.is_local_main_process,
                   acc.is_last_process)
