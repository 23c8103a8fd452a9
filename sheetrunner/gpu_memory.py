"""GPU memory sizes as people write them (`20GiB`, `512 MiB`, `16G`), in MiB as nvidia-smi
counts them. Used by `[[hosts]] min_free_memory` and the `gpu_memory` column. Pure."""

from __future__ import annotations

import math
import re

MIB = 1 << 20
SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]+)\s*$")
UNITS = {
    "b": 1,
    "k": 1 << 10,
    "kib": 1 << 10,
    "kb": 10**3,
    "m": 1 << 20,
    "mib": 1 << 20,
    "mb": 10**6,
    "g": 1 << 30,
    "gib": 1 << 30,
    "gb": 10**9,
    "t": 1 << 40,
    "tib": 1 << 40,
    "tb": 10**12,
}
EXAMPLE = "20GiB"
MAX_MIB = 1 << 30  # a petabyte of GPU memory is a typo


def size_mib(text: str) -> int | None:
    """`20GiB` as 20480 (MiB, rounded up); None when it is not a size with a unit."""
    found = SIZE_RE.match(text) if len(text) <= 64 else None
    if found is None or found.group(2).lower() not in UNITS:
        return None
    size = float(found.group(1)) * UNITS[found.group(2).lower()]
    mib = math.ceil(size / MIB)
    return mib if 0 <= mib <= MAX_MIB else None


def format_mib(mib: int) -> str:
    """20480 as `20GiB`, 1536 as `1.5GiB`, 512 as `512MiB`: how the messages say it."""
    if mib >= 1024:
        return f"{mib / 1024:.4g}GiB"
    return f"{mib}MiB"


def describe_need(mib: int) -> str:
    return f"{format_mib(mib)} free memory"
