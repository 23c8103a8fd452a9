"""Accelerator kinds: how many a host has, and the environment that hands some to a job."""

from __future__ import annotations

import re

TPU_KIND_RE = re.compile(r"^tpu-(v\d+[a-z]*)-(\d+)$")
# Generations whose slice size counts TensorCores (two per chip) rather than chips.
CORE_COUNTED = {"v2", "v3", "v4", "v5p"}
CHIP_BOUNDS = {1: "1,1,1", 2: "1,2,1", 4: "2,2,1", 8: "2,4,1"}


def is_tpu(kind: int | str) -> bool:
    return isinstance(kind, str) and TPU_KIND_RE.match(kind) is not None


def tpu_chips(kind: str) -> int:
    """Chips on one TPU VM of this kind: `tpu-v4-8` has 4 chips, `tpu-v5e-8` has 8."""
    match = TPU_KIND_RE.match(kind)
    if match is None:
        raise ValueError(f"not a TPU kind: {kind!r}")
    generation, size = match.group(1), int(match.group(2))
    chips = size // 2 if generation in CORE_COUNTED else size
    return max(1, min(chips, 8))  # one VM holds at most 8 chips; bigger slices span VMs


def visible_env(kind: int | str, accelerators: tuple[str, ...]) -> dict[str, str]:
    """The variables that restrict a job to the accelerators it was given."""
    ids = ",".join(accelerators)
    if is_tpu(kind):
        if not accelerators:
            return {"TPU_VISIBLE_CHIPS": "", "JAX_PLATFORMS": "cpu"}
        return {
            "TPU_VISIBLE_CHIPS": ids,
            "TPU_CHIPS_PER_PROCESS_BOUNDS": CHIP_BOUNDS.get(
                len(accelerators), f"1,{len(accelerators)},1"
            ),
            "TPU_PROCESS_BOUNDS": "1,1,1",
        }
    # nvidia-smi numbers GPUs in PCI bus order, CUDA by default fastest first: make CUDA count
    # like nvidia-smi, or a job given GPU 1 could land on the GPU another run holds.
    return {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": ids}
